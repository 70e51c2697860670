"""Wall time of one 12-cell grid serially and on a local Ray, in one run (issue 27).

The grid: tiny Wav2Vec2 × noise burst × FT and GN-FT × learning rates 0.01, 0.05, 0.1 × seeds 0, 1 on the synthetic
corpus (the benchmark's default budget: 5% clean data, 20 epochs), without the lasting checks. The backdoored model
is trained first (or reused from `--suspects_dir`) and is not timed. Then the same cells run serially with
`--serial_threads` torch threads, and on a local Ray with N workers × 1 thread for each N of `--ray_workers`; each
run writes its own results file under `--output_dir`. Appends one JSON record to `benchmarks/executors/speed.json`.

    python benchmarks/executor_speed.py                          # this machine: serial 2 threads, Ray 2 × 1
    python benchmarks/executor_speed.py --ray_workers 1 4 16     # a 16-core machine
    python benchmarks/executor_speed.py --report                 # the table of the recorded runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from hf_gnft.benchmark import Benchmark, BenchmarkConfig
from hf_gnft.executors import ExecutorSettings, TaskResources, start_ray
from hf_gnft.outputs import atomic_write_text, machine_description

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "executors" / "speed.json"
GRID = {
    "models": ["tiny-wav2vec2"],
    "triggers": ["noise_burst"],
    "seeds": [0, 1],
    "defenses": {"ft": {"grid": [0.01, 0.05, 0.1]}, "gn-ft": {"grid": [0.01, 0.05, 0.1]}},
}


def run(output_dir: Path, suspects_dir: str, executor: ExecutorSettings) -> tuple[float, list[dict]]:
    shutil.rmtree(output_dir, ignore_errors=True)
    config = BenchmarkConfig(**GRID, output_dir=str(output_dir), suspects_dir=suspects_dir)
    started = time.perf_counter()
    rows = Benchmark(config).run(executor=executor)
    return time.perf_counter() - started, rows


def report(path: Path = RECORDS) -> str:
    """The recorded runs as a Markdown table."""
    records = json.loads(path.read_text()) if path.exists() else []
    lines = [
        "| machine | executor | workers × threads | cells | wall s | cells / hour | × serial |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        serial = record["runs"][0]["seconds"]
        for entry in record["runs"]:
            lines.append(
                f"| {record['machine']} | {entry['executor']} | {entry['workers']} × {entry['threads']} "
                f"| {entry['cells']} | {entry['seconds']:.0f} | {3600 * entry['cells'] / entry['seconds']:.0f} "
                f"| {serial / entry['seconds']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/executor_speed")
    parser.add_argument(
        "--suspects_dir", default="outputs/sweep_gnft/suspects", help="shared with the small grid"
    )
    parser.add_argument("--serial_threads", type=int, default=2)
    parser.add_argument("--ray_workers", type=int, nargs="+", default=[2])
    parser.add_argument("--report", action="store_true", help="print the table of the recorded runs and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report())
        return
    output = Path(args.output_dir)
    # the suspect first, untimed (trained once, or the small grid's)
    Benchmark(
        BenchmarkConfig(**GRID, output_dir=str(output / "prepare"), suspects_dir=args.suspects_dir)
    ).suspect("tiny-wav2vec2", "noise_burst")
    runs = []
    seconds, rows = run(output / "serial", args.suspects_dir, ExecutorSettings(threads=args.serial_threads))
    runs.append({"executor": "serial", "workers": 1, "threads": args.serial_threads, "cells": len(rows),
                 "seconds": round(seconds, 1)})  # fmt: skip
    import ray

    serial = {(r["defense"], r["value"], r["seed"]): r["after"] for r in rows}
    for workers in args.ray_workers:
        settings = ExecutorSettings(
            executor="ray", threads=1, suspect=TaskResources(1), cell=TaskResources(1)
        )
        start_ray(settings, num_cpus=workers)
        try:
            seconds, rows = run(output / f"ray-{workers}", args.suspects_dir, settings)
        finally:
            ray.shutdown()
        same = sum(serial.get((r["defense"], r["value"], r["seed"])) == r.get("after") for r in rows)
        runs.append({"executor": "ray", "workers": workers, "threads": 1, "cells": len(rows),
                     "seconds": round(seconds, 1), "cells_equal_to_serial": same})  # fmt: skip
    records = json.loads(RECORDS.read_text()) if RECORDS.exists() else []
    records.append({"machine": machine_description().rsplit(",", 1)[0], "runs": runs})
    RECORDS.parent.mkdir(exist_ok=True)
    atomic_write_text(RECORDS, json.dumps(records, indent=2) + "\n")
    print(report())


if __name__ == "__main__":
    main()
