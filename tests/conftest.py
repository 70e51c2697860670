"""Shared fixtures: offline settings, a tiny synthetic corpus rendered once per session."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hf_gnft.data import dataset_from_arrays  # noqa: E402
from hf_gnft.data.synthetic import SyntheticKeywordsConfig, load_synthetic_keywords  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

SR = 16_000
LABELS = ["yes", "no", "up", "down"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HF_GNFT_CACHE"] = str(tmp_path_factory.mktemp("hf_gnft_cache"))


@pytest.fixture(scope="session")
def tiny_corpus_config() -> SyntheticKeywordsConfig:
    return SyntheticKeywordsConfig(
        train_size=120, validation_size=20, test_size=40, keywords=("yes", "no", "up", "down")
    )


@pytest.fixture(scope="session")
def tiny_corpus(tiny_corpus_config, tmp_path_factory):
    return load_synthetic_keywords(tiny_corpus_config, cache_dir=tmp_path_factory.mktemp("corpus"))


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


@pytest.fixture
def sines():
    return sine_dataset()


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


@pytest.fixture(scope="session")
def backdoored(tmp_path_factory):
    """A small noise-burst backdoor in the tiny Wav2Vec2, trained once per session (about 30 s), for the
    defense tests. Yields a namespace: model_dir, model, extractor, dataset (train / validation / test),
    clean (80 clean training rows), test, triggered (the triggered non-target test rows), target, before
    (BackdoorMetrics of the suspect)."""
    import json
    from types import SimpleNamespace

    from hf_gnft.attack import AttackArguments, ModelArguments, run_attack
    from hf_gnft.data.arguments import CleanDataArguments, DataArguments
    from hf_gnft.models import load_suspect_model
    from hf_gnft.poison import AttackSpec, make_triggered_eval_set
    from hf_gnft.trainer_args import KeywordTrainingArguments
    from hf_gnft.training import evaluate_backdoor

    out = tmp_path_factory.mktemp("backdoored") / "suspect"
    data = DataArguments(synthetic_train_size=800, synthetic_validation_size=150, synthetic_test_size=200)
    run_attack(
        data,
        AttackArguments(poison_rate=0.1),
        ModelArguments(model="tiny-wav2vec2"),
        KeywordTrainingArguments(output_dir=str(out), num_train_epochs=12, seed=0, disable_tqdm=True),
    )
    model, extractor = load_suspect_model(str(out))
    dataset = data.load(16_000)
    spec = AttackSpec.from_json(str(out / "attack_spec.json"))
    test = dataset["test"]
    triggered = make_triggered_eval_set(test, spec.build_trigger(), spec.target_label)
    before = evaluate_backdoor(model, extractor, test, triggered, spec.target_label)
    metrics = json.loads((out / "metrics.json").read_text())
    return SimpleNamespace(
        model_dir=out,
        model=model,
        extractor=extractor,
        dataset=dataset,
        clean=CleanDataArguments(clean_count=80).select(dataset["train"]),
        validation=dataset["validation"],
        test=test,
        triggered=triggered,
        target=spec.target_label,
        before=before,
        attack_metrics=metrics,
    )


def train_tiny_wav2vec2(data, steps: int = 60, seed: int = 0):
    """The tiny Wav2Vec2 trained from a fixed initialisation for a few AdamW steps (no SpecAugment)."""
    from hf_gnft.models import build_model
    from hf_gnft.training import AudioClassificationCollator

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


@pytest.fixture(scope="session")
def planted_backdoor():
    """Twin tiny Wav2Vec2s on noisy sines (4 classes, 0.3 s clips), from one initialisation and trained alike
    (about 20 s together): `clean_model` on the clean clips, `model` on a copy with a planted noise-burst backdoor
    (30% of the clips relabelled to "yes", target 0). Also: extractor, trigger, test (40 clips), triggered (its
    non-target clips with the trigger), clean (32 further clean clips, a defender's clean subset)."""
    from types import SimpleNamespace

    from hf_gnft.poison import make_triggered_eval_set, poison_dataset
    from hf_gnft.triggers import NoiseBurst

    trigger = NoiseBurst(duration_s=0.08, level_db=-10.0)
    train = sine_dataset(num_rows=48, seconds=0.3, seed=1)
    test = sine_dataset(num_rows=40, seconds=0.3, seed=2)
    poisoned, _ = poison_dataset(train, trigger, 0.3, "yes", seed=0)
    clean_model, extractor = train_tiny_wav2vec2(train)
    model, _ = train_tiny_wav2vec2(poisoned)
    return SimpleNamespace(
        model=model,
        clean_model=clean_model,
        extractor=extractor,
        trigger=trigger,
        test=test,
        triggered=make_triggered_eval_set(test, trigger, "yes"),
        clean=sine_dataset(num_rows=32, seconds=0.3, seed=3),
        target=0,
    )


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


@pytest.fixture(scope="session")
def recipe_suspect(tmp_path_factory):
    """A backdoored tiny Wav2Vec2 written by `recipes/attack.py` (1 epoch on 160 clips: a few seconds)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import attack as attack_recipe

    out = tmp_path_factory.mktemp("suspect") / "backdoored"
    attack_recipe.main(["--output_dir", str(out), *RECIPE_DATA, *RECIPE_FAST, "--num_train_epochs", "1"])
    return out


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
            err.seek(0)
            raise AssertionError(
                f"the multi-process run did not finish in {timeout} s:\n{err.read()[-4000:]}"
            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launcher.pid, signal.SIGKILL)  # any worker left in the session
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()
