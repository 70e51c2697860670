"""Regenerate (or check) every results table in README.md and docs/ from the committed results files.

A results table lives between two markers that name the command which prints it:

    <!-- generated: hf-gnft benchmark benchmarks/grids/tsbd.yaml --report -->
    | ... the command's table ... |
    <!-- /generated -->

This script runs each named report (from the committed files only: nothing trains) and writes its output between
the markers; with `--check` it changes nothing and exits 1 naming every block that differs, which is what the test
suite runs. A hand-edited number, or a results file updated without regenerating the docs, fails the check. A table
that is reference, not results (a list of triggers, of models), is marked `<!-- reference table -->` on the line
before it; any other table outside a generated block fails `tests/test_docs.py`.

    python benchmarks/docs_tables.py            # rewrite every block
    python benchmarks/docs_tables.py --check    # the test's check
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- generated: (?P<command>[^>]+?) -->\n(?P<body>.*?)<!-- /generated -->", re.DOTALL)


def documents(root: Path = ROOT) -> list[Path]:
    """The README and the docs pages (dated notes under docs/notes are records, not generated)."""
    return [root / "README.md", *sorted(p for p in (root / "docs").rglob("*.md") if "notes" not in p.parts)]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"hf_gnft_docs_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _benchmark(grid: str, headline_defense: str | None = None) -> str:
    from hf_gnft.benchmark import Benchmark, BenchmarkConfig, headline, summarise

    config = BenchmarkConfig.from_yaml(ROOT / grid)
    config.output_dir = str(ROOT / config.output_dir)
    rows = Benchmark(config).rows()
    return headline(rows, config, headline_defense) if headline_defense else summarise(rows, config)


#: command pattern -> what prints its table (the same function the command runs)
GENERATORS: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"hf-gnft benchmark (\S+) --report --headline (\S+)"), lambda m: _benchmark(m[1], m[2])),
    (re.compile(r"hf-gnft benchmark (\S+) --report"), lambda m: _benchmark(m[1])),
    (
        re.compile(r"python benchmarks/attack_table\.py(?: --table (\S+))? --report"),
        lambda m: _script("attack_table").report(m[1] or "attack_table"),
    ),
    (
        re.compile(r"python benchmarks/lasting_probe\.py --report"),
        lambda m: _script("lasting_probe").report(str(ROOT / "benchmarks" / "lasting" / "probe.jsonl")),
    ),
    (
        re.compile(r"python benchmarks/relearning_probe\.py --report"),
        lambda m: _script("relearning_probe").report(
            str(ROOT / "benchmarks" / "lasting" / "relearning.jsonl")
        ),
    ),
    (
        re.compile(r"python benchmarks/executor_speed\.py --report"),
        lambda m: _script("executor_speed").report(),
    ),
    (
        re.compile(r"hf-gnft demo --report (\S+)"),
        lambda m: __import__("hf_gnft.scripts.demo", fromlist=["report"]).report(ROOT / m[1]),
    ),
]


def generate(command: str) -> str:
    """The table `command` prints."""
    for pattern, function in GENERATORS:
        match = pattern.fullmatch(command.strip())
        if match:
            return function(match).rstrip("\n")
    raise ValueError(f"no generator for {command!r}: add it to GENERATORS in benchmarks/docs_tables.py")


def update(path: Path, check: bool = False) -> list[str]:
    """Regenerate the blocks of one document (or, with `check`, list those that differ)."""
    text = path.read_text()
    stale = []

    def replace(match: re.Match) -> str:
        body = generate(match["command"]) + "\n"
        if body != match["body"]:
            stale.append(f"{path.relative_to(ROOT)}: {match['command']}")
        return f"<!-- generated: {match['command']} -->\n{body}<!-- /generated -->"

    new = BLOCK.sub(replace, text)
    if not check and new != text:
        path.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    stale = [entry for path in documents() for entry in update(path, check=args.check)]
    for entry in stale:
        print(("stale: " if args.check else "regenerated: ") + entry)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
