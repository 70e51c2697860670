"""Writing run outputs: atomically, resumably, and without pickles in what is meant to be shared.

A run writes into `OUTPUT_DIR.partial/` (checkpoints included) and renames it to `OUTPUT_DIR` only when
everything (weights, config, feature extractor, card, metrics) is there. A run killed in the middle
leaves `OUTPUT_DIR` as it was and, if it saved checkpoints, a `.partial` folder to resume from; never a
folder that looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import FeatureExtractionMixin, PreTrainedModel, Trainer
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def machine_description() -> str:
    """The machine a run used, for the records it writes."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


class OutputExistsError(FileExistsError):
    """The output folder already holds a finished result (or an interrupted run) and may not be replaced."""


def partial_dir(target: str | os.PathLike) -> Path:
    """Where a run writes before its output is complete: `OUTPUT_DIR.partial` next to `OUTPUT_DIR`."""
    target = Path(target)
    return target.parent / f"{target.name}{PARTIAL_SUFFIX}"


def check_output_dir(target: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse, before any work, to replace a finished output or to silently drop an interrupted run's
    checkpoints.

    Raises:
        OutputExistsError: `target` is a non-empty folder and `overwrite` is off; or `OUTPUT_DIR.partial` holds
            checkpoints and neither `resume` nor `overwrite` is on; or `resume` is on and there is nothing
            to resume.
    """
    target = Path(target)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise OutputExistsError(
            f"{target} already holds a finished result; pass --overwrite_output_dir true to replace it "
            "(it is replaced only once the new result is complete)"
        )
    staging = partial_dir(target)
    checkpoint = get_last_checkpoint(str(staging)) if staging.is_dir() else None
    if resume and checkpoint is None:
        raise OutputExistsError(f"nothing to resume: {staging} holds no checkpoint-* folder")
    if checkpoint is not None and not resume and not overwrite:
        raise OutputExistsError(
            f"{staging} holds the checkpoints of an interrupted run (last: {Path(checkpoint).name}); pass "
            "--resume_from_checkpoint true to continue it, or --overwrite_output_dir true to start again"
        )


def resume_checkpoint(target: str | os.PathLike, resume_from_checkpoint: str | bool | None) -> str | None:
    """The checkpoint to resume from: the last one in `OUTPUT_DIR.partial` for `True` / "true", a given path
    as it is, or `None`."""
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True"):
        checkpoint = get_last_checkpoint(str(partial_dir(target)))
        if checkpoint is None:
            raise OutputExistsError(f"nothing to resume: {partial_dir(target)} holds no checkpoint-* folder")
        return checkpoint
    return str(resume_from_checkpoint)


@dataclass
class StagedDir:
    """A folder being written; it replaces `target` when the `with` block ends without an error."""

    path: Path
    target: Path
    publish: bool = True  # False on the processes of a distributed run that must not write


@contextlib.contextmanager
def staged_output_dir(
    target: str | os.PathLike, *, overwrite: bool = False, resume: bool = False, main_process: bool = True
) -> Iterator[StagedDir]:
    """Write into `OUTPUT_DIR.partial` and rename it to `target` at the end.

    Args:
        target: the finished output folder.
        overwrite: replace a finished `target` (only once the new result is complete) and discard an
            interrupted run's checkpoints.
        resume: keep `OUTPUT_DIR.partial` (an interrupted run's checkpoints) to continue from it.
        main_process: only the main process of a distributed run creates, publishes or removes anything.

    On an error the partial folder is removed unless it holds checkpoints (then it is kept for
    `--resume_from_checkpoint`); a kill leaves it as it is. `checkpoint-*` folders are not published.
    """
    target = Path(target)
    staging = partial_dir(target)
    staged = StagedDir(staging, target, publish=main_process)
    if not main_process:
        yield staged
        return
    check_output_dir(target, overwrite=overwrite, resume=resume)
    if staging.exists() and not resume:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        yield staged
    except BaseException:
        if get_last_checkpoint(str(staging)) is None:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            logger.warning(
                "Interrupted: %s keeps its checkpoints; resume with --resume_from_checkpoint true", staging
            )
        raise
    if not staged.publish:
        shutil.rmtree(staging, ignore_errors=True)
        return
    for leftover in staging.glob("checkpoint-*"):
        shutil.rmtree(leftover)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def atomic_cache_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A cache entry written into a unique temporary sibling and renamed to `target` at the end; when another
    process finished the same entry first, its copy is kept and this one dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if not target.exists():
            with contextlib.suppress(OSError):  # lost a race: the other process's entry stands
                os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary sibling and a rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_shareable_model(
    model: Trainer | PreTrainedModel, feature_extractor: FeatureExtractionMixin, path: str | os.PathLike
) -> None:
    """Save the model (safetensors; from a `Trainer` or a model) and its feature extractor; drop Trainer's
    pickled `training_args.bin` and any checkpoint left in `path`."""
    if isinstance(model, Trainer):
        model.save_model(str(path))
    else:
        model.save_pretrained(str(path), safe_serialization=True)
    feature_extractor.save_pretrained(str(path))
    Path(path, "training_args.bin").unlink(missing_ok=True)
    for leftover in Path(path).glob("checkpoint-*"):
        shutil.rmtree(leftover)
