"""Writing run outputs: atomically, and without pickles in what is meant to be shared."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import FeatureExtractionMixin, Trainer


@dataclass
class StagedDir:
    """A folder being written; it replaces `target` when the `with` block ends without an error."""

    path: Path
    target: Path
    publish: bool = True  # False on the processes of a distributed run that must not write


@contextlib.contextmanager
def staged_output_dir(target: str | os.PathLike) -> Iterator[StagedDir]:
    """Write into a temporary sibling folder and rename it to `target` at the end.

    A crash leaves no half-written folder that looks complete: the staging folder (a hidden
    `.NAME.tmp-*` next to the target) is removed, and an existing `target` is only replaced on success.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = StagedDir(Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)), target)
    try:
        yield staged
        if staged.publish:
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged.path, target)
    finally:
        shutil.rmtree(staged.path, ignore_errors=True)


def save_shareable_model(
    trainer: Trainer, feature_extractor: FeatureExtractionMixin, path: str | os.PathLike
) -> None:
    """Save the model (safetensors) and its feature extractor; drop Trainer's pickled `training_args.bin`."""
    trainer.save_model(str(path))
    feature_extractor.save_pretrained(str(path))
    Path(path, "training_args.bin").unlink(missing_ok=True)
    for leftover in Path(path).glob("checkpoint-*"):
        shutil.rmtree(leftover)
