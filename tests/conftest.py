"""Shared fixtures: offline settings, a tiny synthetic corpus rendered once per session, backdoored models.

The helpers the tests share are in testing_utils.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from testing_utils import RECIPE_DATA, RECIPE_FAST, sine_dataset, train_tiny_wav2vec2  # noqa: E402

from hf_gnft.data.synthetic import SyntheticKeywordsConfig, load_synthetic_keywords  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


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


@pytest.fixture
def sines():
    return sine_dataset()


@pytest.fixture(scope="session")
def backdoored(tmp_path_factory):
    """A small noise-burst backdoor in the tiny Wav2Vec2, trained once per session (about 25 s), for the
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
    data = DataArguments(synthetic_train_size=400, synthetic_validation_size=150, synthetic_test_size=200)
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


@pytest.fixture(scope="session")
def mfcc_suspect(tmp_path_factory):
    """A backdoored smallcnn (the GN-FT paper's MFCC CNN) written by `hf-gnft attack` (1 epoch on 160 clips)."""
    from hf_gnft.scripts import attack as attack_recipe

    out = tmp_path_factory.mktemp("mfcc-suspect") / "backdoored"
    attack_recipe.main(["--output_dir", str(out), "--model", "smallcnn", *RECIPE_DATA, *RECIPE_FAST,
                        "--num_train_epochs", "1"])  # fmt: skip
    return out


@pytest.fixture(scope="session")
def recipe_suspect(tmp_path_factory):
    """A backdoored tiny Wav2Vec2 written by `hf-gnft attack` (1 epoch on 160 clips: a few seconds)."""
    from hf_gnft.scripts import attack as attack_recipe

    out = tmp_path_factory.mktemp("suspect") / "backdoored"
    attack_recipe.main(["--output_dir", str(out), *RECIPE_DATA, *RECIPE_FAST, "--num_train_epochs", "1"])
    return out


@pytest.fixture(scope="session")
def planted_tone_backdoor():
    """A tiny Wav2Vec2 on the planted twins' noisy sines with a planted tone backdoor instead (2.5 kHz, 0.08 s at
    0.05 s, −10 dB re the clip; 30% of the clips relabelled to "yes", target 0), trained like the twins (about
    10 s). Also: extractor, trigger, clean (32 further clean clips)."""
    from types import SimpleNamespace

    from hf_gnft.poison import poison_dataset
    from hf_gnft.triggers import Tone

    trigger = Tone(frequency_hz=2500.0, duration_s=0.08, level_db=-10.0)
    poisoned, _ = poison_dataset(sine_dataset(num_rows=48, seconds=0.3, seed=1), trigger, 0.3, "yes", seed=0)
    model, extractor = train_tiny_wav2vec2(poisoned)
    return SimpleNamespace(model=model, extractor=extractor, trigger=trigger, target=0,
                           clean=sine_dataset(num_rows=32, seconds=0.3, seed=3))  # fmt: skip
