"""Hub-ready outputs: the model card (model-index round trip, no local details) and the push."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from local_hub import LocalHub
from testing_utils import DEFEND_FAST, RECIPE_DATA, minimal_defense_record

from hf_gnft.hub import CARD_METRICS, HubPushError, build_model_card, hub_files, push_output_dir, redact_local

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_" + "SecretTokenThatMustNeverBeWritten0123"


def _metrics(card: ModelCard) -> dict[str, float]:
    return {result.metric_type: result.metric_value for result in card.data.eval_results}


def test_card_round_trips_with_before_and_after_metrics_in_the_model_index(tmp_path):
    record = minimal_defense_record()
    build_model_card(record, "acme/kws-cleaned").save(str(tmp_path / "README.md"))
    card = ModelCard.load(str(tmp_path / "README.md"))
    metrics = _metrics(card)
    assert metrics == {
        "clean_accuracy": 89.0, "clean_accuracy_before": 90.0,
        "attack_success_rate": 10.0, "attack_success_rate_before": 95.0,
        "robust_accuracy": 80.0, "robust_accuracy_before": 4.0,
        "defense_effectiveness_rating": 0.92,
    }  # fmt: skip
    results = card.data.eval_results
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == {
        ("audio-classification", "hf-gnft/synthetic-keywords", "test")
    }
    assert {r.metric_name for r in results} == set(CARD_METRICS.values())
    assert card.data.model_name == "acme/kws-cleaned" and card.data.library_name == "transformers"
    assert {"hf-gnft", "backdoor-defense", "audio-classification"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local suspect is described by its hash, not a path
    text = card.text
    for needed in ("Limitations", "does not prove", "2502.01152", "noise_burst", "200 clean clips", "seed 0",
                   "x86_64, 2 CPUs", "12.5 s", "gn_alpha", "abababab"):  # fmt: skip
        assert needed in text, needed


def test_card_of_a_hub_suspect_names_it_as_base_model_with_its_commit(tmp_path):
    suspect = {"source": "hub", "name": "acme/kws-suspect", "revision": "v1", "commit": "f" * 40,
               "weights_format": "safetensors", "model_type": "hubert", "custom_code": ["auto_map.AutoConfig = x.Y"]}  # fmt: skip
    card = build_model_card(minimal_defense_record(suspect=suspect), "acme/kws-cleaned")
    assert card.data.base_model == "acme/kws-suspect"
    assert "f" * 40 in card.text and "revision `v1`" in card.text and "auto_map.AutoConfig" in card.text


def test_card_without_a_known_attack_states_only_clean_accuracy():
    record = minimal_defense_record(attack=None, der=None)
    record["before"] = {"clean_accuracy": 0.9, "attack_success_rate": None, "robust_accuracy": None}
    record["after"] = {"clean_accuracy": 0.88, "attack_success_rate": None, "robust_accuracy": None}
    card = build_model_card(record, "kws-cleaned")
    assert _metrics(card) == {"clean_accuracy": 88.0, "clean_accuracy_before": 90.0}
    assert "attack success rate was not measured" in card.text


def test_a_purify_card_says_when_the_detection_was_weak():
    info = {"fallback": None, "targets": [8], "target_names": ["stop"], "rounds": [{}, {}, {}]}
    record = minimal_defense_record(defense="purify", info={**info, "weak_detection": None})
    assert "detection was weak" not in build_model_card(record, "kws-cleaned").text
    record["info"]["weak_detection"] = {"best_success": 0.49, "bar": 0.7}
    text = " ".join(build_model_card(record, "kws-cleaned").text.split())
    assert (
        "The detection was weak:** the strongest inverted trigger sent only 49% of held-out clean clips"
        in text
    )
    assert "below the 70% a backdoor's target reaches, so it may not be the backdoor's target" in text
    record["info"] = {"fallback": "gn-ft", "targets": [], "target_names": [], "rounds": []}
    text = " ".join(build_model_card(record, "kws-cleaned").text.split())
    assert "nothing was unlearned" in text and "a backdoor that no inversion family expresses" in text


def test_card_holds_no_local_path_or_user_name(tmp_path):
    record = minimal_defense_record(
        data_args={"dataset": "audiofolder", "data_dir": str(tmp_path / "my-data")},
        attack={**minimal_defense_record()["attack"], "trigger": {"type": "clip_overlay", "path": str(tmp_path / "t.wav")}},
    )  # fmt: skip
    text = str(build_model_card(record, "kws-cleaned"))
    assert str(tmp_path) not in text and "/tmp" not in text
    assert getpass.getuser() not in text.replace("<user>", "")
    assert "<local: t.wav>" in text and "a local audio folder" in text


def test_redact_local_replaces_paths_and_keeps_other_values(tmp_path):
    assert redact_local({"a": str(tmp_path / "x.wav"), "b": [1, "keyword"], "c": None}) == {
        "a": "<local: x.wav>", "b": [1, "keyword"], "c": None}  # fmt: skip


# ------------------------------------------------------------------------------------------------- push


@pytest.fixture
def finished_output(tmp_path) -> Path:
    """A folder shaped like a defend.py output, plus what must never be uploaded."""
    out = tmp_path / "cleaned"
    out.mkdir()
    for name, content in {"config.json": "{}", "model.safetensors": "weights", "preprocessor_config.json": "{}",
                          "defense_metrics.json": "{}", "README.md": "card"}.items():  # fmt: skip
        (out / name).write_text(content)
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "optimizer.pt").write_text("pickle")
    (out / "training_args.bin").write_text("pickle")
    (out / ".hidden").write_text("x")
    return out


UPLOADED = [
    "README.md",
    "config.json",
    "defense_metrics.json",
    "model.safetensors",
    "preprocessor_config.json",
]


def test_dry_run_lists_exactly_the_files_and_sends_nothing(finished_output, capsys):
    with LocalHub() as hub:
        result = push_output_dir(finished_output, "acme/kws", dry_run=True)
    assert result.files == UPLOADED == hub_files(finished_output) and result.dry_run
    printed = capsys.readouterr().out
    assert all(name in printed for name in UPLOADED) and "checkpoint-4" not in printed
    assert hub.requests == []


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub pointed at a local hub with a token, as HF_ENDPOINT / HF_TOKEN would."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SECRET)

    def point_at(hub: LocalHub) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)

    return point_at


def test_push_uploads_exactly_the_output_files_with_the_token(finished_output, online, caplog):
    with LocalHub() as hub:
        online(hub)
        result = push_output_dir(finished_output, "acme/kws-cleaned", private=True)
    (created,) = hub.created
    assert (created["organization"], created["name"], created["visibility"]) == (
        "acme",
        "kws-cleaned",
        "private",
    )
    (commit,) = hub.commits
    assert commit["repo"] == "acme/kws-cleaned" and sorted(commit["files"]) == UPLOADED == result.files
    assert all(commit["files"][name] == (finished_output / name).read_bytes() for name in UPLOADED)
    assert all(
        r["headers"].get("authorization") == f"Bearer {SECRET}" for r in hub.requests if r["method"] == "POST"
    )
    assert SECRET not in caplog.text


def test_failed_push_keeps_the_local_result_and_says_how_to_retry(finished_output, online):
    before = {p: p.read_bytes() for p in finished_output.rglob("*") if p.is_file()}
    with LocalHub(fail_commits=True) as hub:
        online(hub)
        with pytest.raises(HubPushError, match="local result is intact; retry with:  hf-gnft push") as failed:
            push_output_dir(finished_output, "acme/kws-cleaned")
    assert SECRET not in str(failed.value)
    assert {p: p.read_bytes() for p in finished_output.rglob("*") if p.is_file()} == before


def test_push_needs_a_finished_output(tmp_path):
    with pytest.raises(HubPushError, match="not a finished output"):
        push_output_dir(tmp_path, "acme/kws")


def test_defend_pushes_through_hf_endpoint_and_never_writes_the_token(recipe_suspect, tmp_path):
    """End to end, as a user runs it: `recipes/defend.py --push_to_hub` with HF_ENDPOINT and HF_TOKEN set."""
    out = tmp_path / "cleaned"
    with LocalHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0"}
        run = subprocess.run(
            [sys.executable, str(REPO_ROOT / "recipes" / "defend.py"), "--model", str(recipe_suspect),
             "--output_dir", str(out), "--clean_count", "8", "--max_steps", "2", "--logging_steps", "1",
             "--push_to_hub", "true", "--hub_model_id", "acme/kws-cleaned", *RECIPE_DATA, *DEFEND_FAST],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (commit,) = hub.commits
    assert sorted(commit["files"]) == hub_files(out)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "defense_metrics.json",
            "attack_spec.json"} <= set(commit["files"])  # fmt: skip
    assert all(commit["files"][name] == (out / name).read_bytes() for name in commit["files"])
    card = ModelCard.load(str(out / "README.md"))
    assert {
        "clean_accuracy",
        "attack_success_rate",
        "clean_accuracy_before",
        "attack_success_rate_before",
    } <= set(_metrics(card))
    assert json.loads(run.stdout.strip().splitlines()[-1])["pushed_to"].startswith(hub.url)
    assert SECRET not in run.stdout + run.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    uploaded_text = b"".join(commit["files"].values()).decode(errors="replace")
    assert str(tmp_path) not in uploaded_text and str(recipe_suspect) not in uploaded_text
