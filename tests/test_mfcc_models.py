"""The GN-FT paper's MFCC networks as transformers models, and their MFCC feature extractor."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from testing_utils import DEFEND_FAST, LABELS, RECIPE_DATA, SR, InOrderGNFT, config, sine_dataset
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from hf_gnft import AudioError
from hf_gnft.mfcc_models import MFCC_FAMILIES, MFCCClassifierConfig, MFCCFeatureExtractor
from hf_gnft.models import TINY_MODELS, build_model, load_suspect_model
from hf_gnft.scripts import defend as defend_recipe
from hf_gnft.training import AudioClassificationCollator


def reference_mfcc(clip: np.ndarray, n_mfcc=40, n_fft=400, hop=160, n_mels=128, top_db=80.0) -> np.ndarray:
    """torchaudio's MFCC defaults written out from their definitions, in float64 (no audio_utils, no scipy)."""
    padded = np.pad(clip.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[i : i + n_fft] for i in range(0, len(padded) - n_fft + 1, hop)])
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, bins)
    hz = np.linspace(0, SR / 2, n_fft // 2 + 1)

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(0.0), mel(SR / 2), n_mels + 2) / 2595.0) - 1.0)
    filters = np.zeros((n_mels, hz.size))
    for m in range(n_mels):
        low, centre, high = edges[m], edges[m + 1], edges[m + 2]
        filters[m] = np.maximum(0, np.minimum((hz - low) / (centre - low), (high - hz) / (high - centre)))
    db = 10 * np.log10(np.maximum(power @ filters.T, 1e-10))  # (frames, mels)
    db = np.maximum(db, db.max() - top_db)
    k, n = np.arange(n_mfcc)[:, None], np.arange(n_mels)[None, :]
    dct = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
    dct[0] /= math.sqrt(2.0)  # orthonormal DCT-II
    return db @ dct.T  # (frames, n_mfcc)


def test_mfcc_matches_an_independent_reference():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    clips = [
        (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(SR)).astype(np.float32),
        (0.1 * rng.standard_normal(SR)).astype(np.float32),
    ]
    extractor = MFCCFeatureExtractor()
    features = extractor(clips, sampling_rate=SR, return_tensors="np")["input_features"]
    assert features.shape == (2, 101, 40) and extractor.num_frames == 101
    for clip, ours in zip(clips, features, strict=True):
        reference = reference_mfcc(clip)
        # float32 output of dB-scale values (hundreds): within 1e-3 dB-equivalents of the float64 formula
        np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-3)
    again = extractor(clips, sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(again, features)  # deterministic
    single = extractor(clips[1], sampling_rate=SR, return_tensors="np")["input_features"]
    np.testing.assert_array_equal(single[0], features[1])  # batching does not change a clip's features


def test_clips_are_cut_or_padded_to_one_fixed_map():
    extractor = MFCCFeatureExtractor()
    long = np.full(SR + 3000, 0.1, dtype=np.float32)
    short = np.full(SR // 2, 0.1, dtype=np.float32)
    features = extractor([long, short], sampling_rate=SR, return_tensors="np")["input_features"]
    assert features.shape == (2, 101, 40)
    np.testing.assert_array_equal(
        features[0], extractor(long[:SR], sampling_rate=SR, return_tensors="np")["input_features"][0]
    )


@pytest.mark.parametrize(
    "clip, rate, message",
    [
        (np.zeros(399, dtype=np.float32), SR, "shorter than the MFCC window"),
        (np.zeros(8000, dtype=np.float32), 8000, "resample"),
        (np.zeros((2, 8000), dtype=np.float32)[None], SR, "mono"),
        (np.array([0.0, np.nan] * 400, dtype=np.float32), SR, "NaN"),
        (np.zeros(0, dtype=np.float32), SR, "empty"),
    ],
)
def test_bad_clips_are_refused_with_a_clear_error(clip, rate, message):
    with pytest.raises(AudioError, match=message):
        MFCCFeatureExtractor()(list(clip) if clip.ndim == 3 else clip, sampling_rate=rate)


def test_an_unknown_family_is_refused_with_the_known_ones():
    # transformers' configs validate with huggingface_hub's strict dataclasses; the cause is ours
    with pytest.raises(StrictDataclassClassValidationError, match="the families are smallcnn, largecnn"):
        MFCCClassifierConfig(family="alexnet")
    with pytest.raises(ValueError, match=r"unknown model 'smalcnn'.*smallcnn"):
        build_model("smalcnn", LABELS)


@pytest.mark.parametrize("family", MFCC_FAMILIES)
def test_each_family_round_trips_through_save_and_auto_from_pretrained(tmp_path, family):
    assert family in TINY_MODELS
    torch.manual_seed(0)
    model, extractor = build_model(family, LABELS)
    data = sine_dataset(num_rows=3)
    batch = AudioClassificationCollator(extractor)([data[i] for i in range(3)])
    assert batch["input_features"].shape == (3, 101, 40)
    model.train()
    model(**batch).loss.backward()  # trains (BatchNorm statistics move) and has gradients everywhere
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(input_features=batch["input_features"]).logits
    model.save_pretrained(tmp_path / family)
    extractor.save_pretrained(tmp_path / family)
    assert (tmp_path / family / "model.safetensors").is_file()
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path / family).eval()
    loaded_extractor = AutoFeatureExtractor.from_pretrained(tmp_path / family)
    assert type(loaded_extractor) is MFCCFeatureExtractor and loaded.config.family == family
    again = AudioClassificationCollator(loaded_extractor)([data[i] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**{"input_features": again["input_features"]}).logits, logits,
                                   rtol=0, atol=0)  # fmt: skip
    assert logits.shape == (3, len(LABELS))


def test_loading_without_import_hf_gnft_fails_naming_it(tmp_path):
    model, extractor = build_model("smallcnn", LABELS)
    model.save_pretrained(tmp_path / "m")
    extractor.save_pretrained(tmp_path / "m")
    code = (
        "import sys\n"
        "from transformers import AutoModelForAudioClassification\n"
        "AutoModelForAudioClassification.from_pretrained(sys.argv[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode != 0 and "hf_gnft" in result.stderr
    from transformers import AutoModelForAudioClassification  # here, where hf_gnft is imported: it loads

    assert type(AutoModelForAudioClassification.from_pretrained(tmp_path / "m")) is type(model)


def test_a_saved_family_is_not_reported_as_custom_code_but_a_foreign_architecture_is(tmp_path):
    model, extractor = build_model("smallcnn", LABELS)
    model.save_pretrained(tmp_path / "m")
    extractor.save_pretrained(tmp_path / "m")
    _, _, provenance = load_suspect_model(str(tmp_path / "m"), return_provenance=True)
    assert provenance.custom_code == []  # hf_gnft's own registered class, loaded from this package
    config_path = tmp_path / "m" / "config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "architectures": ["SomebodysOwnClassifier"]}))
    _, _, provenance = load_suspect_model(str(tmp_path / "m"), return_provenance=True)
    assert provenance.custom_code == ["architectures: SomebodysOwnClassifier (not a transformers class)"]


def test_gnft_on_a_batchnorm_family_updates_the_running_statistics_once_per_step(tmp_path):
    """The second (perturbed) pass of GN-FT must not move BatchNorm statistics: on the paper's ResNet, after two
    steps the statistics equal plain fine-tuning's with the same batches (α = 0 takes one pass)."""
    data = sine_dataset(num_rows=8)
    stats = {}
    for alpha in (0.0, 0.7):
        torch.manual_seed(0)
        model, extractor = build_model("resnet", LABELS)
        args = config(tmp_path, f"bn{alpha}", gn_alpha=alpha, max_steps=2, learning_rate=1e-30)
        InOrderGNFT(model=model, args=args, train_dataset=data,
                    data_collator=AudioClassificationCollator(extractor)).train()  # fmt: skip
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        stats[alpha] = [
            (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms
        ]
    for (mean0, var0, count0), (mean7, var7, count7) in zip(stats[0.0], stats[0.7], strict=True):
        torch.testing.assert_close(mean7, mean0, rtol=0, atol=0)
        torch.testing.assert_close(var7, var0, rtol=0, atol=0)
        assert count7 == count0 == 2


def test_inversion_of_a_feature_map_model_is_additive_on_the_map():
    from hf_gnft.inversion import InversionError, InversionSettings, class_batches, invert, invert_classes

    torch.manual_seed(0)
    model, extractor = build_model("smallcnn", LABELS)
    data = sine_dataset(num_rows=16)
    detection = invert_classes(model, extractor, data, InversionSettings(steps=2), batch_size=8)
    assert set(detection.success) == {"additive"}  # the spectral family needs the waveform
    assert set(detection.success["additive"]) == set(range(len(LABELS)))
    trigger = detection.triggers["additive"][0]
    assert trigger.delta.shape == (101, 40)
    maps = torch.zeros(3, 101, 40)
    torch.testing.assert_close(trigger.apply(maps), trigger.delta.expand(3, 101, 40))
    batches = class_batches(data, extractor, 1, 8)
    with pytest.raises(InversionError, match="acts on the waveform"):
        invert(model, batches, 1, "spectral", InversionSettings(steps=1))


@pytest.mark.parametrize("name, family", [("tsbd", "rnn"), ("fp", "smallcnn"), ("nad", "smallcnn"),
                                          ("anp", "smallcnn"), ("clp", "smallcnn")])  # fmt: skip
def test_defenses_with_transformer_neurons_refuse_an_mfcc_network_by_name(tmp_path, name, family):
    from hf_gnft.defenses import UnsupportedModelError, get_defense

    model, extractor = build_model(family, LABELS)  # (TSBD ranks Conv2d channels: rnn has none)
    method = get_defense(name)
    fields = {f for f in method.config_class.__dataclass_fields__}
    settings = {"output_dir": str(tmp_path)} if "output_dir" in fields else {}
    if "max_steps" in fields:
        settings.update(max_steps=1, per_device_train_batch_size=4, use_cpu=True, report_to="none")
    with pytest.raises(UnsupportedModelError, match="MFCCClassifierForAudioClassification"):
        method.apply(model, extractor, sine_dataset(num_rows=8), method.make_config(**settings))


def test_tsbd_ranks_the_conv2d_channels_of_an_mfcc_network_and_zeroes_only_them(tmp_path):
    from hf_gnft.defenses.tsbd import TSBDConfig, apply_tsbd, tsbd_neuron_layers

    torch.manual_seed(0)
    model, extractor = build_model("smallcnn", LABELS)
    layers = tsbd_neuron_layers(model, ["feed_forward", "attention_output", "conv", "conv2d"])
    assert [layer.kind for layer in layers] == ["conv2d"] * 3 and sum(
        layer.num_neurons for layer in layers
    ) == 160
    config = TSBDConfig(output_dir=str(tmp_path), tsbd_fine_tune=False, tsbd_max_unlearning_steps=3,
                        tsbd_neuron_ratio=0.05, per_device_train_batch_size=4, use_cpu=True, report_to="none")  # fmt: skip
    outcome = apply_tsbd(model, extractor, sine_dataset(num_rows=8), config)
    before, after = dict(model.named_parameters()), dict(outcome.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.endswith("weight") and "features" in name for name in changed)
    zeroed = sum(int(((after[n] == 0) & (before[n] != 0)).sum()) for n in changed)
    assert zeroed > 0


# tsbd (5 s) in make test-slow: TSBD on an MFCC network is checked directly above (apply_tsbd on a smallcnn)
@pytest.mark.parametrize("defense", ["gn-ft", pytest.param("tsbd", marks=pytest.mark.slow), "purify"])
def test_the_recipes_attack_and_defend_an_mfcc_network_like_any_model(mfcc_suspect, tmp_path, defense):
    settings = {
        "gn-ft": ["--max_steps", "2"],
        "tsbd": ["--max_steps", "1", "--tsbd_max_unlearning_steps", "2"],
        "purify": ["--max_steps", "2", "--purify_steps", "2", "--purify_detection_steps", "2",
                   "--purify_relearn_encoder_steps", "2", "--purify_detection_threshold", "0"],
    }[defense]  # fmt: skip
    out = tmp_path / defense
    defend_recipe.main(["--defense", defense, "--model", str(mfcc_suspect), "--output_dir", str(out),
                        "--clean_count", "8", *RECIPE_DATA, *DEFEND_FAST, *settings])  # fmt: skip
    record = json.loads((out / "defense_metrics.json").read_text())
    assert record["model_type"] == "hf_gnft_mfcc" and record["model_family"] == "smallcnn"
    assert record["after"]["attack_success_rate"] is not None
    card = (out / "README.md").read_text()
    assert "`import hf_gnft` before" in card and "(`smallcnn`)" in card
    model, extractor = load_suspect_model(str(out))  # the trust checks: safetensors, no remote code
    assert type(extractor) is MFCCFeatureExtractor and model.config.family == "smallcnn"
    if defense == "purify":
        assert set(record["info"]["detection"]["gap"]) == {
            "additive"
        }  # the spectral family needs the waveform
