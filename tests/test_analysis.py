"""Neuron-gradient analysis: profiles, categories by ablation, the analysis recipe, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from testing_utils import LABELS, RECIPE_DATA, RECIPE_FAST, sine_dataset, tiny_float64_model
from wired_model import TARGET, TRIGGER, WiredKeywordModel, sine_keywords

from hf_gnft.analysis import categorize_neurons, mean_by_category, neuron_gradient_profile
from hf_gnft.analysis.categories import replayed_feature_encoder
from hf_gnft.models import build_model
from hf_gnft.neurons import UnknownLayerError, default_layer_names, resolve_layers
from hf_gnft.poison import make_triggered_eval_set
from hf_gnft.training import audio_batches

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extractor():
    return build_model("tiny-wav2vec2", LABELS)[1]


@pytest.fixture(scope="module")
def wired_data():
    clean = sine_keywords(32)
    return clean, make_triggered_eval_set(clean, TRIGGER, TARGET)


# ------------------------------------------------------------------------------------------------ layers


def test_default_layers_are_the_feed_forward_neurons_and_the_projector():
    model, _ = build_model("tiny-wav2vec2", LABELS)
    assert default_layer_names(model) == [
        "wav2vec2.encoder.layers.0.feed_forward.intermediate_dense",
        "wav2vec2.encoder.layers.1.feed_forward.intermediate_dense",
        "projector",
    ]
    assert [layer.num_neurons for layer in resolve_layers(model)] == [256, 256, 64]
    conv = resolve_layers(model, ["wav2vec2.feature_extractor.conv_layers.0.conv"])[0]
    assert conv.num_neurons == 32


@pytest.mark.parametrize("config_class", ["WavLMConfig", "Data2VecAudioConfig"])
def test_the_wav2vec2_family_is_profiled_and_its_feature_encoder_replayed(config_class, extractor):
    import transformers

    config = getattr(transformers, config_class)(
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=24, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        classifier_proj_size=8, num_labels=len(LABELS), mask_time_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForAudioClassification.from_config(config)
    names = default_layer_names(model)
    assert len(names) == 3 and names[-1] == "projector"
    data = sine_dataset(num_rows=4, seconds=0.2)
    profile = neuron_gradient_profile(model, extractor, data, progress=False)
    assert [values.numel() for values in profile.layers.values()] == [24, 24, 8]
    batches = list(audio_batches(data, extractor, 4))
    with torch.no_grad(), replayed_feature_encoder(model, resolve_layers(model), batches):
        assert "forward" in vars(model.base_model.feature_extractor)


def test_a_layer_that_does_not_exist_is_refused_with_the_available_ones():
    model, _ = build_model("tiny-hubert", LABELS)
    with pytest.raises(UnknownLayerError, match="no Linear / Conv1d layer named 'encoder.nope'") as error:
        resolve_layers(model, ["projector", "encoder.nope"])
    assert "hubert.encoder.layers.1.feed_forward.intermediate_dense" in str(error.value)
    assert "classifier" in str(error.value)
    with pytest.raises(UnknownLayerError, match="twice"):
        resolve_layers(model, ["projector", "projector"])


# ------------------------------------------------------------------------------------------------ profile


def test_gradient_profile_is_the_batch_mean_of_summed_weight_gradient_magnitudes(extractor):
    model, _ = tiny_float64_model()
    model.train()
    data = sine_dataset(num_rows=6, seconds=0.3)
    profile = neuron_gradient_profile(model, extractor, data, ["projector"], batch_size=4, progress=False)
    expected = torch.zeros(64, dtype=torch.float64)
    for rows in (range(0, 4), range(4, 6)):
        model.zero_grad()
        batch = next(audio_batches(data.select(rows), extractor, 8))
        model.eval()
        logits = model(input_values=batch["input_values"].double()).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        expected += len(rows) * model.projector.weight.grad.abs().sum(1)
    torch.testing.assert_close(profile.layers["projector"], expected / 6)
    assert profile.num_samples == 6 and profile.label_source == "label"


def test_gradient_profile_restores_mode_and_flags_and_takes_a_fixed_label(extractor):
    model, _ = build_model("tiny-wav2vec2", LABELS)
    model.train()
    model.wav2vec2.feature_extractor._freeze_parameters()
    flags = [param.requires_grad for param in model.parameters()]
    data = sine_dataset(num_rows=4, seconds=0.3)
    own = neuron_gradient_profile(model, extractor, data, batch_size=4, progress=False)
    fixed = neuron_gradient_profile(model, extractor, data, labels=2, batch_size=4, progress=False)
    assert model.training and [param.requires_grad for param in model.parameters()] == flags
    assert all(param.grad is None for param in model.parameters())
    assert fixed.label_source == "class 2"
    assert not torch.equal(own.flat(), fixed.flat())
    assert set(own.to_dict()["layers"]) == set(default_layer_names(model))
    with pytest.raises(ValueError, match="empty"):
        neuron_gradient_profile(model, extractor, data.select([]), progress=False)


# ------------------------------------------------------------------------------------------------ categories


def test_categories_find_the_neuron_wired_to_the_trigger(extractor, wired_data):
    clean, triggered = wired_data
    model = WiredKeywordModel(backdoor=True)
    categories = categorize_neurons(model, extractor, clean, triggered, TARGET, ["hidden"], progress=False)
    assert categories.categories == {"hidden": ["backdoor", "clean", "clean", "clean", "clean", "hybrid"]}
    assert categories.counts() == {"backdoor": 1, "hybrid": 1, "clean": 4}
    change = categories.backdoor_loss_change["hidden"]
    assert change[0] > 0.5 and change[5] > 0.05  # zeroing the trigger neuron breaks the backdoor
    assert categories.clean_loss_change["hidden"][0] == 0  # it is silent on clean clips
    assert categories.clean_loss_change["hidden"][5] > 0.05  # the hybrid one also serves the target class
    assert categories.backdoor_loss < 0.05

    plain = WiredKeywordModel(backdoor=False)
    assert categorize_neurons(
        plain, extractor, clean, triggered, TARGET, ["hidden"], progress=False
    ).counts() == {
        "backdoor": 0,
        "hybrid": 0,
        "clean": 6,
    }


def test_mean_by_category_pools_layers_and_gives_the_ratio(extractor, wired_data):
    clean, triggered = wired_data
    model = WiredKeywordModel(backdoor=True)
    categories = categorize_neurons(model, extractor, clean, triggered, TARGET, ["hidden"], progress=False)
    profile = neuron_gradient_profile(model, extractor, triggered, ["hidden"], progress=False)
    summary = mean_by_category(profile, categories)
    values = profile.layers["hidden"]
    assert summary["all"]["backdoor"] == {"count": 1, "mean": pytest.approx(float(values[0]))}
    assert summary["all"]["clean"]["mean"] == pytest.approx(float(values[1:5].mean()))
    assert summary["all"]["ratio_backdoor_to_clean"] == pytest.approx(float(values[0] / values[1:5].mean()))
    assert summary["hidden"]["hybrid"]["count"] == 1


def test_replaying_the_feature_encoder_changes_no_loss_and_skips_the_convolutions(extractor):
    model, _ = tiny_float64_model()
    model.eval()
    data = sine_dataset(num_rows=6, seconds=0.3)
    batches = [{k: v.double() if v.is_floating_point() else v for k, v in b.items()}
               for b in audio_batches(data, extractor, 4)]  # fmt: skip
    layers = resolve_layers(model)
    calls = []
    model.wav2vec2.feature_extractor.conv_layers[0].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        plain = [model(input_values=b["input_values"]).logits for b in batches]
        computed = len(calls)
        with replayed_feature_encoder(model, layers, batches):
            replayed = [model(input_values=b["input_values"]).logits for b in batches]
    assert len(calls) == 2 * computed  # once to fill the cache, never again
    for a, b in zip(plain, replayed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "forward" not in vars(model.wav2vec2.feature_extractor)  # restored
    conv = resolve_layers(model, ["wav2vec2.feature_extractor.conv_layers.1.conv"])
    with replayed_feature_encoder(model, conv, batches):  # a scored layer inside the encoder: no replay
        assert "forward" not in vars(model.wav2vec2.feature_extractor)


def test_categories_refuse_empty_sets_and_a_negative_threshold(extractor, wired_data):
    clean, triggered = wired_data
    model = WiredKeywordModel()
    with pytest.raises(ValueError, match="empty"):
        categorize_neurons(model, extractor, clean, triggered.select([]), TARGET, ["hidden"], progress=False)
    with pytest.raises(ValueError, match="threshold"):
        categorize_neurons(
            model, extractor, clean, triggered, TARGET, ["hidden"], threshold=-1, progress=False
        )


# ------------------------------------------------------------------------------------------------ recipe


@pytest.mark.slow  # 30 s: make test-slow (kept under 10 min for make test)
def test_analyze_recipe_writes_the_numbers_and_plots(recipe_suspect, tmp_path):
    from hf_gnft.scripts import analyze, defend

    cleaned = tmp_path / "cleaned"
    defend.main(["--model", str(recipe_suspect), "--output_dir", str(cleaned), "--clean_count", "16",
                 "--max_steps", "2", "--learning_rate", "0.05", *RECIPE_DATA, *RECIPE_FAST])  # fmt: skip
    out = tmp_path / "analysis"
    args = ["--model", str(recipe_suspect), "--cleaned_model", str(cleaned), "--output_dir", str(out),
            "--layers", "projector", "--max_samples", "16", "--scan_split", "test", "--scan_max_clips", "12",
            *RECIPE_DATA]  # fmt: skip
    record = analyze.main(args)
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json",
        "before_after.png",
        "gradient_by_category.png",
        "per_layer.png",
    ]
    assert all(
        (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for name in ("before_after.png", "per_layer.png")
    )
    written = json.loads((out / "analysis.json").read_text())
    assert written["categories"]["counts"] == record["categories"]["counts"]
    assert sum(written["categories"]["counts"].values()) == 64
    assert set(written["suspect"]["by_category"]) == {"clean", "triggered"}
    assert len(written["suspect"]["profiles"]["triggered"]["layers"]["projector"]) == 64
    assert written["cleaned"]["metrics"]["attack_success_rate"] is not None
    assert {"suspect", "cleaned"} == set(written["scan"]) and "verdict" in written["scan"]["suspect"]
    assert written["scan"]["suspect"]["num_clips"] == 12
    assert str(tmp_path) not in (out / "analysis.json").read_text()  # no local paths
    assert not (tmp_path / "analysis.partial").exists()
    with pytest.raises(FileExistsError, match="already holds a finished result"):
        analyze.main(args)


def test_analyze_recipe_names_the_layers_when_one_is_unknown(recipe_suspect, tmp_path):
    from hf_gnft.scripts import analyze

    with pytest.raises(UnknownLayerError, match="available: .*projector"):
        analyze.main(["--model", str(recipe_suspect), "--output_dir", str(tmp_path / "a"), "--layers", "nope",
                      *RECIPE_DATA])  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()


# ------------------------------------------------------------------------------------------------ scan


def test_scan_reports_every_statistic_and_leaves_the_model_as_it_was(extractor):
    from hf_gnft.analysis import STATISTICS, ScanCalibration, scan_model

    model, _ = build_model("tiny-wav2vec2", LABELS)
    model.train()
    flags = [param.requires_grad for param in model.parameters()]
    calibration = ScanCalibration("gradient_tail", threshold=1e9, false_positive_rate=0.0, detection_rate=0.5)
    result = scan_model(model, extractor, sine_dataset(num_rows=12, seconds=0.3), calibration=calibration,
                        batch_size=8, universal_steps=2, progress=False)  # fmt: skip
    assert set(result.statistics) == set(STATISTICS) and all(v == v for v in result.statistics.values())
    assert set(result.per_class) == set(LABELS) and set(result.suspected_targets.values()) <= set(LABELS)
    assert result.score == result.statistics["gradient_tail"] and not result.suspicious
    assert result.suspected_target is None  # the verdict's statistic is not class-wise
    assert result.verdict.startswith("NO EVIDENCE FOUND") and "not proof" in result.verdict
    assert "50% of backdoored and 0% of clean" in result.verdict
    assert model.training and [param.requires_grad for param in model.parameters()] == flags
    assert all(param.grad is None for param in model.parameters())

    flagged = scan_model(model, extractor, sine_dataset(num_rows=12, seconds=0.3), batch_size=8, universal_steps=2,
                         progress=False, calibration=ScanCalibration("input_gradient_coherence_ratio", threshold=0.0))  # fmt: skip
    assert flagged.suspicious and flagged.verdict.startswith("SUSPICIOUS")
    assert flagged.suspected_target == flagged.suspected_targets["input_gradient_coherence_ratio"]
    assert repr(flagged.suspected_target) in flagged.verdict
    assert (
        json.loads(json.dumps(flagged.to_dict()))["calibration"]["statistic"]
        == "input_gradient_coherence_ratio"
    )


def test_scan_refuses_what_it_cannot_scan(extractor):
    from hf_gnft.analysis import ScanCalibration, ScanError, scan_model
    from hf_gnft.data import dataset_from_arrays

    model, _ = build_model("tiny-wav2vec2", LABELS)
    calibration = ScanCalibration("gradient_tail", threshold=10.0)
    with pytest.raises(ScanError, match="empty"):
        scan_model(
            model, extractor, sine_dataset(num_rows=4).select([]), calibration=calibration, progress=False
        )
    one_class = dataset_from_arrays([torch.randn(4800).numpy()] * 2, [0, 0], ["yes"])
    with pytest.raises(ScanError, match="at least 2"):
        scan_model(model, extractor, one_class, calibration=calibration, progress=False)
    with pytest.raises(ScanError, match="unknown scan statistic"):
        ScanCalibration("loudness", threshold=1.0)
    with pytest.raises(ScanError, match="finite"):
        ScanCalibration("gradient_tail", threshold=float("nan"))
    with pytest.raises(UnknownLayerError, match="available"):
        scan_model(model, extractor, sine_dataset(num_rows=4), layers=["nope"], calibration=calibration)
    with pytest.raises(ScanError, match="universal_steps"):
        scan_model(model, extractor, sine_dataset(num_rows=4, seconds=0.2), universal_steps=0, progress=False,
                   calibration=ScanCalibration("universal_perturbation_gap", threshold=0.1))  # fmt: skip


def test_auroc_and_the_calibrated_threshold():
    from hf_gnft.analysis import ScanError, auroc, calibrate_threshold

    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0], [2.0]) == 0.0
    assert auroc([1.0, 3.0], [2.0, 2.0]) == 0.5
    assert auroc([2.0], [2.0]) == 0.5  # ties count half
    clean = [1.0, 1.2, 0.9, 1.1]
    threshold = calibrate_threshold(clean)
    assert threshold >= max(clean) and threshold == pytest.approx(max(1.05 + 2 * 0.1290994, 1.2), rel=1e-6)
    assert calibrate_threshold([1.0, 1.0, 5.0], deviations=0.0) == 5.0  # never below the largest clean score
    with pytest.raises(ScanError, match="at least 2"):
        calibrate_threshold([1.0])


def test_scan_ranks_a_planted_backdoor_above_its_clean_twin(planted_backdoor):
    """Two tiny models from one initialisation, trained alike, one on data with a planted noise-burst backdoor
    (30% of the clips relabelled to "yes"): the shipped verdict flags that one, and only that one."""
    from hf_gnft.analysis import ScanCalibration, scan_model
    from hf_gnft.training import evaluate_backdoor

    planted = planted_backdoor
    backdoored, clean_model, extractor, test = (
        planted.model,
        planted.clean_model,
        planted.extractor,
        planted.test,
    )
    assert evaluate_backdoor(backdoored, extractor, test, planted.triggered, 0).attack_success_rate > 0.9
    assert evaluate_backdoor(clean_model, extractor, test, planted.triggered, 0).attack_success_rate < 0.1

    calibration = ScanCalibration.shipped()
    assert calibration.statistic == "universal_perturbation_gap"
    scans = {name: scan_model(model, extractor, test, progress=False)
             for name, model in (("clean", clean_model), ("backdoored", backdoored))}  # fmt: skip
    assert scans["backdoored"].score > scans["clean"].score
    assert scans["backdoored"].suspicious and not scans["clean"].suspicious
    success = {c: v["universal_success"] for c, v in scans["backdoored"].per_class.items()}
    assert scans["backdoored"].suspected_target == "yes" and success["yes"] > max(
        v for c, v in success.items() if c != "yes"
    )
