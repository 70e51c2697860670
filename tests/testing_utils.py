"""Helpers shared by the tests (the fixtures are in conftest.py): tiny data and models, GN-FT trainers that feed
rows in order, the recipe tests' flags, a defense record, and a multi-process launcher runner."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch.utils.data import SequentialSampler

from hf_gnft.data import dataset_from_arrays
from hf_gnft.defenses.gnft_config import GNFTConfig
from hf_gnft.defenses.gnft_trainer import GNFTTrainer
from hf_gnft.training import AudioClassificationCollator, AudioClassificationTrainer

SR = 16_000
LABELS = ["yes", "no", "up", "down"]

#: Flags of the recipe tests: a small synthetic corpus, and fast training settings.
RECIPE_DATA = [
    "--synthetic_train_size",
    "160",
    "--synthetic_validation_size",
    "0",
    "--synthetic_test_size",
    "40",
]
RECIPE_FAST = ["--disable_tqdm", "true", "--per_device_train_batch_size", "8"]
#: ... and for `hf-gnft defend` in tests that are not about the re-inversion check (it inverts every class) or the
#: relapse check (two more fine-tunes).
DEFEND_FAST = [*RECIPE_FAST, "--reinversion_check", "false", "--relapse_check", "false"]


def sine_dataset(num_rows: int = 40, seconds: float = 1.0, seed: int = 0):
    """A keyword dataset of noisy sines (one frequency per class), built without eSpeak."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    labels = [i % len(LABELS) for i in range(num_rows)]
    clips = [
        (0.3 * np.sin(2 * np.pi * (300 + 150 * label) * t) + 0.01 * rng.standard_normal(t.size)).astype(
            np.float32
        )
        for label in labels
    ]
    return dataset_from_arrays(clips, labels, LABELS, sampling_rate=SR)


def tiny_float64_model(
    *, dropout: bool = False, spec_augment: bool = False, layerdrop: float = 0.0, seed: int = 0
):
    """The tiny Wav2Vec2 in float64, by default with every source of randomness off (for exact comparisons)."""
    from hf_gnft.models import build_model

    torch.manual_seed(seed)
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    model.double()
    model.config.mask_time_prob = 0.5 if spec_augment else 0.0
    model.config.mask_time_length = 2
    model.config.layerdrop = layerdrop
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "dropout", None), float):  # attention dropout is a functional call
                module.dropout = 0.0
    return model, extractor


tiny_model = tiny_float64_model


def train_tiny_wav2vec2(data, steps: int = 60, seed: int = 0):
    """The tiny Wav2Vec2 trained from a fixed initialisation for a few AdamW steps (no SpecAugment)."""
    from hf_gnft.models import build_model

    torch.manual_seed(seed)
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    model.config.mask_time_prob = 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    collator = AudioClassificationCollator(extractor)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(data), (16,), generator=generator).tolist()
        loss = model(**collator([data[i] for i in rows])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), extractor


class Float64Collator(AudioClassificationCollator):
    def __call__(self, rows):
        batch = super().__call__(rows)
        batch["input_values"] = batch["input_values"].double()
        return batch


class InOrder:
    """Mixin: feed the rows in dataset order, so micro-batches are known."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


class InOrderGNFT(InOrder, GNFTTrainer):
    pass


class InOrderFT(InOrder, AudioClassificationTrainer):
    pass


def config(tmp_path, name: str = "run", **overrides) -> GNFTConfig:
    """A one-step, deterministic CPU `GNFTConfig` writing to `tmp_path / name`; `overrides` change any field."""
    values = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        seed=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    values.update(overrides)
    return GNFTConfig(**values)


def flat(model) -> torch.Tensor:
    """All parameters of `model`, detached, as one flat vector."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def minimal_defense_record(validation_drop: float = 0.0, learning_rate: float = 0.05, **overrides) -> dict:
    """A `defense_metrics.json` record with every field the card and the search read (fixed numbers)."""
    record = {
        "before": {"clean_accuracy": 0.9, "attack_success_rate": 0.95, "robust_accuracy": 0.04},
        "after": {"clean_accuracy": 0.89, "attack_success_rate": 0.1, "robust_accuracy": 0.8},
        "validation_accuracy": {"before": 0.9, "after": 0.9 - validation_drop},
        "der": 0.92,
        "defense": "gn-ft",
        "train_seconds": 12.5,
        "total_seconds": 20.0,
        "clean_rows": 200,
        "suspect": {
            "source": "local",
            "name": None,
            "revision": None,
            "commit": None,
            "weights_format": "safetensors",
            "weights_sha256": "ab" * 32,
            "model_type": "wav2vec2",
            "architectures": ["Wav2Vec2ForSequenceClassification"],
            "custom_code": [],
        },  # fmt: skip
        "attack": {
            "trigger": {"type": "noise_burst"},
            "rate": 0.1,
            "target_label": 0,
            "target_name": "yes",
            "mode": "dirty",
            "seed": 0,
            "num_poisoned": 40,
            "num_rows": 400,
            "poisoned_ids_sha256": "cd" * 32,
            "label_names": ["yes", "no"],
        },  # fmt: skip
        "clean_data": {
            "clean_split": "train",
            "clean_fraction": 0.05,
            "clean_count": None,
            "clean_seed": 0,
            "eval_split": "test",
            "validation_split": "validation",
        },  # fmt: skip
        "data_args": {
            "dataset": "synthetic",
            "synthetic_seed": 0,
            "synthetic_train_size": 4000,
            "synthetic_test_size": 1000,
        },  # fmt: skip
        "gn": {"gn_alpha": 0.7, "gn_radius": 0.05},
        "optim": {"optim": "sgd", "learning_rate": learning_rate},
        "machine": "x86_64, 2 CPUs, torch 2.13.0+cpu, 2 threads",
    }
    record.update(overrides)
    return record


def free_port() -> int:
    """A TCP port free right now on localhost (for a launcher's rendezvous, instead of a fixed one)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_launcher(command: list[str], env: dict, timeout: float) -> tuple[int, str, str]:
    """Run a multi-process launcher (torchrun) in its own session, its output in files (a worker left behind
    cannot block reading a pipe); on a time-out kill the session and fail. Returns (code, stdout, stderr)."""
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        launcher = subprocess.Popen(
            command, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )
        try:
            code = launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=30)
            out.seek(0)
            err.seek(0)
            raise AssertionError(
                f"the multi-process run did not finish in {timeout} s:\n"
                f"{out.read()[-2000:]}\n{err.read()[-6000:]}"
            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launcher.pid, signal.SIGKILL)  # any worker left in the session
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def load_benchmark_script(name: str) -> ModuleType:
    """A script of `benchmarks/` (not a package) imported as a module, for testing its functions."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
