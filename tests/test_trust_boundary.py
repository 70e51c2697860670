"""The suspect model is untrusted: no unpickling without an opt-in, no remote code, pinned provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_gnft.models import UntrustedCheckpointError, build_model, inspect_checkpoint, load_suspect_model

LABELS = ["yes", "no", "up", "down"]
#: Imported by transformers only if it runs the checkpoint's code; importing it writes the marker file.
EVIL_MODULE = """
import os
from pathlib import Path
Path(os.environ["HF_GNFT_MARKER"]).write_text("remote code ran")
from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
class EvilConfig(Wav2Vec2Config):
    model_type = "evil-wav2vec2"
class EvilModel(Wav2Vec2ForSequenceClassification):
    config_class = EvilConfig
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, extractor = build_model("tiny-wav2vec2", LABELS)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out


def _copy(checkpoint: Path, target: Path, weights: bool = True) -> Path:
    target.mkdir()
    for path in checkpoint.iterdir():
        if weights or not path.name.endswith(".safetensors"):
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_safetensors_checkpoint_loads_with_its_weights_hash(checkpoint):
    model, extractor, provenance = load_suspect_model(str(checkpoint), return_provenance=True)
    assert provenance.source == "local" and provenance.weights_format == "safetensors"
    assert provenance.name is None and len(provenance.weights_sha256) == 64  # no local path is recorded
    assert provenance.model_type == "wav2vec2" and provenance.custom_code == []
    expected = load_file(str(checkpoint / "model.safetensors"))
    assert torch.equal(model.state_dict()["classifier.weight"], expected["classifier.weight"])


def test_pickle_only_checkpoint_is_refused_and_loads_with_the_opt_in(checkpoint, tmp_path):
    pickled = _copy(checkpoint, tmp_path / "pickled", weights=False)
    torch.save(load_file(str(checkpoint / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(UntrustedCheckpointError, match="only pickled weights") as refused:
        load_suspect_model(str(pickled))
    assert "use_safetensors=False).save_pretrained(" in str(refused.value)  # how to convert it
    assert "--allow_pickle_weights" in str(refused.value)
    model, _, provenance = load_suspect_model(str(pickled), allow_pickle_weights=True, return_provenance=True)
    assert provenance.weights_format == "pickle"
    expected = load_file(str(checkpoint / "model.safetensors"))
    assert torch.equal(model.state_dict()["classifier.weight"], expected["classifier.weight"])


def test_checkpoint_without_weights_is_refused(checkpoint, tmp_path):
    empty = _copy(checkpoint, tmp_path / "empty", weights=False)
    with pytest.raises(UntrustedCheckpointError, match="no model weights"):
        inspect_checkpoint(str(empty))


def _evil_checkpoint(checkpoint: Path, target: Path, model_type: str | None = None) -> Path:
    evil = _copy(checkpoint, target)
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForAudioClassification": "evil.EvilModel",
    }
    if model_type:
        config["model_type"] = model_type
        config["architectures"] = ["EvilModel"]
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(EVIL_MODULE)
    return evil


def _load_in_subprocess(
    folder: Path, marker: Path, tmp_path: Path, trust: bool
) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        from hf_gnft.models import load_suspect_model
        try:
            _, _, p = load_suspect_model({str(folder)!r}, trust_remote_code={trust}, return_provenance=True)
            print("LOADED", p.custom_code)
        except Exception as error:
            print("REFUSED", type(error).__name__, error)
    """)
    env = {**os.environ, "HF_GNFT_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("model_type", [None, "evil-wav2vec2"], ids=["known-model-type", "custom-model-type"])
def test_config_asking_for_remote_code_does_not_run_it(checkpoint, tmp_path, model_type):
    evil = _evil_checkpoint(checkpoint, tmp_path / "evil", model_type)
    marker = tmp_path / "marker.txt"
    provenance = inspect_checkpoint(str(evil))
    assert any(
        entry.startswith("auto_map.AutoModelForAudioClassification") for entry in provenance.custom_code
    )
    run = _load_in_subprocess(evil, marker, tmp_path, trust=False)
    assert not marker.exists(), run.stdout + run.stderr
    if model_type is None:  # a transformers model type: loaded with transformers' own class
        assert "LOADED" in run.stdout and "auto_map" in run.stdout, run.stdout + run.stderr
    else:  # only the checkpoint's code could build it: refused
        assert "REFUSED" in run.stdout, run.stdout + run.stderr
    assert "custom code" in run.stderr  # reported


def test_the_marker_module_does_run_when_remote_code_is_trusted(checkpoint, tmp_path):
    """The control for the test above: the same checkpoint runs its code once the user opts in."""
    evil = _evil_checkpoint(checkpoint, tmp_path / "evil", "evil-wav2vec2")
    marker = tmp_path / "marker.txt"
    run = _load_in_subprocess(evil, marker, tmp_path, trust=True)
    assert marker.read_text() == "remote code ran", run.stdout + run.stderr


def test_hub_checkpoint_is_pinned_to_its_commit(checkpoint, tmp_path):
    """A Hub id (served from a local Hub cache, offline) is loaded at the commit its revision resolves to."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--kws-suspect"
    snapshot = repo / "snapshots" / commit
    snapshot.parent.mkdir(parents=True)
    _copy(checkpoint, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = textwrap.dedent("""
        import json
        from hf_gnft.models import load_suspect_model
        model, _, p = load_suspect_model("acme/kws-suspect", revision="main", return_provenance=True)
        print(json.dumps({**p.to_dict(), "describe": p.describe(), "labels": model.config.num_labels}))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    provenance = json.loads(run.stdout.strip().splitlines()[-1])
    assert provenance["source"] == "hub" and provenance["name"] == "acme/kws-suspect"
    assert provenance["revision"] == "main" and provenance["commit"] == commit
    assert provenance["describe"] == f"acme/kws-suspect@{commit[:12]}" and provenance["labels"] == 4
