"""Every built-in trigger against tiny Wav2Vec2, HuBERT, WavLM and Data2VecAudio on the synthetic corpus
(`make attack-table`), or against the GN-FT paper's MFCC networks (`make attack-table-paper`).

Trains one backdoored model per (model, trigger) cell with the default attack recipe (10% dirty-label
poisoning, target "yes", 15 epochs unless told otherwise) and, with `--clean`, one model per family without
poisoning (trigger "none": its clean accuracy), and writes `benchmarks/results/<table>.jsonl` (one row per cell)
and `benchmarks/<table>.md`. Resumable: a cell whose `metrics.json` exists is not re-run, and the rows of cells
this run does not name stay in the table (so families can be added one session at a time; each row keeps the
machine it was measured on). Each row also keeps its training budget (epochs, learning rate): a run with
`--num_train_epochs` or `--learning_rate` trains into cells of its own and adds its rows beside the recipe's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
from pathlib import Path

import torch

from hf_gnft.attack import (
    METRICS_FILE,
    TRAINING_ARGS_FILE,
    AttackArguments,
    ModelArguments,
    run_attack,
    training_budget_suffix,
)
from hf_gnft.data.arguments import DataArguments
from hf_gnft.executors import (
    EXECUTORS,
    ExecutorError,
    ExecutorSettings,
    as_completed,
    describe_task_error,
    pin_threads,
    run_remote,
    start_ray,
)
from hf_gnft.outputs import atomic_write_text
from hf_gnft.trainer_args import KeywordTrainingArguments
from hf_gnft.triggers import reference_triggers

HERE = Path(__file__).resolve().parent


def triggers() -> dict[str, dict]:
    return {name: trigger.to_dict() for name, trigger in reference_triggers(16_000).items()}


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (CPU)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="outputs/attack_table")
    parser.add_argument(
        "--models", nargs="+", default=["tiny-wav2vec2", "tiny-hubert", "tiny-wavlm", "tiny-data2vec-audio"]
    )
    parser.add_argument(
        "--triggers",
        nargs="*",
        default=list(triggers()),
        help="none given: only the clean models (with --clean)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--clean", action="store_true", help="also train each model without poisoning")
    parser.add_argument("--table", default="attack_table", help="the name of the table's files")
    parser.add_argument(
        "--tables_dir", default=str(HERE), help="where the table's files go (results/ under it)"
    )
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--num_train_epochs", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--executor", choices=EXECUTORS, default="serial", help="where the cells train")
    parser.add_argument("--ray_address", default=None, help="join this Ray cluster (or RAY_ADDRESS)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per cell (default: its CPUs)"
    )
    parser.add_argument("--cpus_per_cell", type=float, default=1.0, help="with Ray: CPUs each cell asks for")
    parser.add_argument("--gpus_per_cell", type=float, default=0.0, help="with Ray: GPUs each cell asks for")
    parser.add_argument(
        "--report", action="store_true", help="print the table of the committed rows and exit"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.table, Path(args.tables_dir)))
        return
    try:
        executor = ExecutorSettings.from_grid(
            None, {"suspect": {"cpus": args.cpus_per_cell, "gpus": args.gpus_per_cell}},
            flag_executor=args.executor, flag_address=args.ray_address, flag_threads=args.threads,
        )  # fmt: skip
    except ExecutorError as error:
        parser.error(str(error))
    training = {
        key: value
        for key, value in (("learning_rate", args.learning_rate), ("num_train_epochs", args.num_train_epochs))
        if value is not None
    }
    names = [*args.triggers, *(["none"] if args.clean else [])]
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    tables = Path(args.tables_dir)
    table_rows = tables / "results" / f"{args.table}.jsonl"
    table = read_table(table_rows)
    output_dir = str(Path(args.output_dir).resolve())  # the workers' view of it (shared storage on a cluster)
    cells = [(model, name) for model in args.models for name in names]

    def record(row: dict) -> None:
        table[row_key(row)] = row
        print(json.dumps(row), flush=True)
        write_table(table, tables / f"{args.table}.md", table_rows, argv)

    if executor.executor == "serial":
        if executor.threads is not None:
            pin_threads(executor.threads)
        for model, name in cells:
            record(train_cell(output_dir, model, name, training, args.seed))
    else:
        try:
            ray = start_ray(executor)
        except ExecutorError as error:
            parser.error(str(error))
        threads = executor.task_threads(executor.suspect)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        DataArguments().load(16_000)  # the driver prepares the corpus once
        refs = {
            run_remote(
                ray, train_cell, executor.suspect, output_dir, model, name, training, args.seed, threads
            ): (
                model,
                name,
            )
            for model, name in cells
        }
        for ref, row, error in as_completed(ray, list(refs)):
            if error is not None:  # not in the table: a re-run trains it again
                model, name = refs[ref]
                print(f"{model} with {name} FAILED: {describe_task_error(error)}", flush=True)
            else:
                record(row)
    print((tables / f"{args.table}.md").read_text(), end="")


def train_cell(
    output_dir: str, model: str, name: str, training: dict, seed: int, threads: int | None = None
) -> dict:
    """One (model, trigger) cell: its backdoored (or, for `none`, clean) model, trained unless its folder holds a
    finished one, and its row. Runs in this process or as a Ray task (`threads`: the task's torch threads)."""
    if threads is not None:
        pin_threads(threads)
    cell = (
        Path(output_dir) / f"{model}-{name}{training_budget_suffix(training)}"
    )  # a cell per training budget
    if not (cell / METRICS_FILE).exists():
        print(f"training {model} with {name} ...", flush=True)
        run_attack(
            DataArguments(),
            None if name == "none" else AttackArguments(trigger=json.dumps(triggers()[name])),
            ModelArguments(model=model),
            KeywordTrainingArguments(output_dir=str(cell), seed=seed, disable_tqdm=True, **training),
        )
    metrics = json.loads((cell / METRICS_FILE).read_text())
    trained = json.loads((cell / TRAINING_ARGS_FILE).read_text())
    keys = ("clean_accuracy", "attack_success_rate", "robust_accuracy", "train_seconds", "machine")
    return {
        "model": model,
        "trigger": name,
        "num_train_epochs": trained["num_train_epochs"],
        "learning_rate": trained["learning_rate"],
        **{k: metrics.get(k) for k in keys},
    }


def read_table(table_rows: Path) -> dict[tuple, dict]:
    """The rows of earlier runs, keyed by `row_key`."""
    recipe = {field.name: field.default for field in dataclasses.fields(KeywordTrainingArguments)}
    table = {}
    if table_rows.exists():
        for line in table_rows.read_text().splitlines():
            if line.strip():
                # rows measured before the budget was recorded used the recipe's (the only one then)
                row = {
                    "num_train_epochs": recipe["num_train_epochs"],
                    "learning_rate": recipe["learning_rate"],
                }
                row.update(json.loads(line))
                table[row_key(row)] = row
    return table


def row_key(row: dict) -> tuple:
    """A row per model, trigger and training budget: a family trained longer keeps its row at the recipe's."""
    return row["model"], row["trigger"], row["num_train_epochs"], row["learning_rate"]


def sorted_rows(table: dict[tuple, dict]) -> list[dict]:
    return sorted(
        table.values(),
        key=lambda row: (row["model"], row["trigger"] == "none", row["trigger"], row["num_train_epochs"]),
    )


def table_markdown(table: dict[tuple, dict]) -> str:
    """The Markdown table of every row (`--report` prints it; the docs show it)."""
    return "\n".join(
        [
            "| model | trigger | epochs | lr | CA % | ASR % | RA % | train s |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {r['model']} | {r['trigger']} | {r['num_train_epochs']:g} | {r['learning_rate']:g} "
                f"| {100 * r['clean_accuracy']:.1f} | {percent(r['attack_success_rate'])} "
                f"| {percent(r['robust_accuracy'])} | {r['train_seconds']:.0f} |"
                for r in sorted_rows(table)
            ),
        ]
    )


def report(table_name: str = "attack_table", tables_dir: Path = HERE) -> str:
    """The table of the committed rows of `table_name`, with the machines they were measured on."""
    table = read_table(Path(tables_dir) / "results" / f"{table_name}.jsonl")
    machines = sorted({str(row.get("machine")) for row in table.values()})
    return table_markdown(table) + f"\n\nMachines: {'; '.join(machines)}."


def write_table(
    table: dict[tuple, dict], table_md: Path, table_rows: Path, argv: list[str] | None = None
) -> None:
    """Writes every row measured so far (this run's and earlier runs') to the JSONL file and the Markdown table."""
    table_rows.parent.mkdir(exist_ok=True)
    atomic_write_text(table_rows, "".join(json.dumps(row) + "\n" for row in sorted_rows(table)))
    lines = [
        table_markdown(table),
        "",
        f"Machine: {machine()} (each row's own in `results/{table_rows.name}`). Last command: "
        f"`python benchmarks/attack_table.py {' '.join(sys.argv[1:] if argv is None else argv)}`; rows of earlier runs "
        "are kept.",
    ]
    atomic_write_text(table_md, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
