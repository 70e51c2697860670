"""The README and docs/ cannot go stale: generated tables match their reports, links resolve, commands parse."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
from testing_utils import load_benchmark_script

ROOT = Path(__file__).resolve().parents[1]
docs_tables = load_benchmark_script("docs_tables")
DOCUMENTS = docs_tables.documents(ROOT)
EVERY_PAGE = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_readme_is_short_and_the_docs_pages_exist():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in ("purification", "gnft", "defenses", "lasting", "scan", "models", "data", "hub", "results",
                 "development", "cluster"):  # fmt: skip
        assert (ROOT / "docs" / f"{page}.md").is_file(), page


def test_every_generated_table_is_its_reports_output():
    stale = [entry for path in DOCUMENTS for entry in docs_tables.update(path, check=True)]
    assert not stale, f"regenerate with `python benchmarks/docs_tables.py`: {stale}"


def test_a_hand_edited_number_is_caught(tmp_path):
    page = ROOT / "docs" / "results.md"
    text = page.read_text()
    block = next(b for b in docs_tables.BLOCK.finditer(text) if re.search(r"\d+\.\d", b["body"]))
    edited = re.sub(r"\d+\.\d", lambda m: "99.9" if m[0] != "99.9" else "11.1", block["body"], count=1)
    assert edited != block["body"]
    copy = ROOT / "docs" / f"_edited_{tmp_path.name}.md"  # under the root, as a page is
    copy.write_text(text.replace(block["body"], edited, 1))
    try:
        assert docs_tables.update(copy, check=True) == [f"{copy.relative_to(ROOT)}: {block['command']}"]
    finally:
        copy.unlink()


def _tables_outside_blocks(text: str) -> list[str]:
    """The first line of each Markdown table that is neither in a generated block nor marked as reference."""
    text = docs_tables.BLOCK.sub("", text)
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        starts = line.startswith("|") and (index == 0 or not lines[index - 1].startswith("|"))
        if starts and index + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[index + 1]):
            if index == 0 or lines[index - 1].strip() != "<!-- reference table -->":
                found.append(line)
    return found


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_results_table_is_generated(path):
    assert not _tables_outside_blocks(path.read_text()), (
        "a table outside a <!-- generated: COMMAND --> block: generate it from a committed results file, or mark "
        "it <!-- reference table --> if it holds no results"
    )


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return slug.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_anchor(m[1]) for m in re.finditer(r"^#+ (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("path", EVERY_PAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, broken


def _commands(text: str) -> list[str]:
    """Every `hf-gnft ...` command: lines of code blocks (continuations joined) and inline code spans, outside the
    generated blocks (a report's output may name a command in a sentence)."""
    text = re.sub(r"<!-- generated: .*?<!-- /generated -->", "", text, flags=re.DOTALL)
    commands = []
    for language, block in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.DOTALL):
        if language not in ("", "bash", "sh", "shell"):  # ```text: output, not a command
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("hf-gnft ")]
    outside = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    commands += [span for span in re.findall(r"`(hf-gnft [^`]+)`", outside)]
    return commands


COMMANDS = sorted({(str(p.relative_to(ROOT)), c) for p in EVERY_PAGE for c in _commands(p.read_text())})


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("page, command", COMMANDS)
def test_every_command_shown_parses_with_its_subcommands_parser(page, command, monkeypatch):
    from hf_gnft.cli import RECIPES, _resolve

    monkeypatch.chdir(ROOT)  # a YAML file in a command is named from the repository's root
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", command.split(" #")[0]))[1:]  # [optional flags] left out
    words = [w for w in words if w != "..."]
    while words[:1] == ["--debug"]:
        words = words[1:]
    if words[:1] in (["--help"], ["--version"]) or len(words) < 2:  # the command's name in a sentence
        return
    if words[0].endswith(":"):  # `hf-gnft defend: error: ...`: what a command prints, not a command
        return
    assert words[0] in {*RECIPES, *(a for _, aliases, _ in RECIPES.values() for a in aliases)}, command
    module = importlib.import_module(f"hf_gnft.scripts.{_resolve(words[0])}")
    try:
        module.parse_args(words[1:])
    except SystemExit as stopped:  # --help
        assert stopped.code == 0, command
