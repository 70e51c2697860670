"""Benchmark GN-FT against the baseline defenses on one grid (models × attacks × defenses × knob × seeds).

    hf-gnft benchmark benchmarks/grids/small.yaml            # make bench-defenses
    hf-gnft benchmark benchmarks/grids/small.yaml --limit 10  # at most 10 more cells, then report
    hf-gnft benchmark benchmarks/grids/small.yaml --only tiny-hubert/pbsm  # one suspect's cells first
    hf-gnft benchmark benchmarks/grids/small.yaml --report    # tables and plots from results.jsonl
    hf-gnft benchmark benchmarks/grids/small.yaml --executor ray                        # a local Ray, all cores
    hf-gnft benchmark benchmarks/grids/paper.yaml --executor ray --ray_address HOST:6379  # an existing cluster

Resumable: finished cells (one line each in OUTPUT_DIR/results.jsonl) are never redone, and each backdoored
model is trained once (OUTPUT_DIR/suspects, or the grid's `suspects_dir`). Writes OUTPUT_DIR/results.md
(the table at the knob values chosen on clean validation data, with cost ratios) and the plots
ca_vs_asr.png and der.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from hf_gnft.benchmark import Benchmark, BenchmarkConfig, BenchmarkConfigError, headline, write_reports
from hf_gnft.executors import EXECUTORS, ExecutorError, ExecutorSettings


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", help="the grid's YAML file")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many unfinished cells")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="MODEL[/TRIGGER]",
        help="run only these suspects' unfinished cells now (e.g. tiny-wav2vec2/pbsm); the reports cover the grid",
    )
    parser.add_argument("--report", action="store_true", help="only write the reports from results.jsonl")
    parser.add_argument("--output_dir", default=None, help="override the grid's output_dir")
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help="where the tasks run (default: the grid's, else serial)",
    )
    parser.add_argument(
        "--ray_address",
        default=None,
        help="join this Ray cluster (host:port, ray://host:port, auto; or RAY_ADDRESS)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per task (default: its CPUs)"
    )
    parser.add_argument(
        "--headline",
        default=None,
        metavar="DEFENSE",
        help="with --report: print DEFENSE's verdict table only",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    try:
        config = BenchmarkConfig.from_yaml(args.grid)
        executor = ExecutorSettings.from_grid(config.executor, config.resources, flag_executor=args.executor,
                                              flag_address=args.ray_address, flag_threads=args.threads)  # fmt: skip
    except (BenchmarkConfigError, ExecutorError) as error:
        parser.error(str(error))
    if args.output_dir:
        config.output_dir = args.output_dir
    benchmark = Benchmark(config)
    if args.headline is not None:
        if not args.report or args.headline not in config.defenses:
            parser.error(
                f"--headline takes --report and one of the grid's defenses ({', '.join(config.defenses)})"
            )
        table = headline(benchmark.rows(), config, args.headline)
        print(table)
        return table
    if args.report:
        rows = benchmark.rows()
    else:
        try:
            rows = benchmark.run(limit=args.limit, executor=executor, only=args.only)
        except (ExecutorError, BenchmarkConfigError) as error:
            # an address nothing listens on, resources no node has, an --only naming no suspect: before any task
            parser.error(str(error))
    command = f"hf-gnft benchmark {args.grid}"
    table = write_reports(rows, config, Path(config.output_dir), command)
    print(table)
    return table


if __name__ == "__main__":
    main()
