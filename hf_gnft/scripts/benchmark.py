"""Benchmark GN-FT against the baseline defenses on one grid (models × attacks × defenses × knob × seeds).

    hf-gnft benchmark benchmarks/grids/small.yaml            # make bench-defenses
    hf-gnft benchmark benchmarks/grids/small.yaml --limit 10  # at most 10 more cells, then report
    hf-gnft benchmark benchmarks/grids/small.yaml --report    # tables and plots from results.jsonl

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

from hf_gnft.benchmark import Benchmark, BenchmarkConfig, write_reports


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", help="the grid's YAML file")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many unfinished cells")
    parser.add_argument("--report", action="store_true", help="only write the reports from results.jsonl")
    parser.add_argument("--output_dir", default=None, help="override the grid's output_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    config = BenchmarkConfig.from_yaml(args.grid)
    if args.output_dir:
        config.output_dir = args.output_dir
    benchmark = Benchmark(config)
    rows = benchmark.rows() if args.report else benchmark.run(limit=args.limit)
    command = f"hf-gnft benchmark {args.grid}"
    table = write_reports(rows, config, Path(config.output_dir), command)
    print(table)
    return table


if __name__ == "__main__":
    main()
