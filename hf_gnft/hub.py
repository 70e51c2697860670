"""Hub-ready outputs: the cleaned model's card (with before/after metrics in its model-index) and the push.

The card is rendered from `model_cards/defended_model_card.md` (a Jinja template) through
`huggingface_hub.ModelCard` / `ModelCardData`. Clean accuracy, attack success rate, robust accuracy and DER,
before and after, are metrics of one model-index entry (one task, dataset and split) with distinct metric
types, so the Hub keeps all of them (entries are grouped by task / dataset / split, not by metric name).
Nothing local goes into a card or an uploaded record: no paths, user names or tokens.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import TrainingArguments

from .version import __version__

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_TEMPLATE = "defended_model_card.md"
CARD_TAGS = ["hf-gnft", "backdoor-defense", "audio-classification"]
CITATION = """@article{zhou2025gnft,
  title   = {Gradient Norm-based Fine-Tuning for Backdoor Defense in Automatic Speech Recognition},
  author  = {Zhou and Lin and Liu},
  journal = {arXiv preprint arXiv:2502.01152},
  year    = {2025}
}"""
#: Model-index metric types (distinct, so that the Hub keeps each) and their names, in card order.
CARD_METRICS = {
    "clean_accuracy": "Clean accuracy % (after defense)",
    "clean_accuracy_before": "Clean accuracy % (before defense)",
    "attack_success_rate": "Attack success rate % (after defense)",
    "attack_success_rate_before": "Attack success rate % (before defense)",
    "robust_accuracy": "Robust accuracy % (after defense)",
    "robust_accuracy_before": "Robust accuracy % (before defense)",
    "defense_effectiveness_rating": "Defense effectiveness rating (DER, 0.5 = no effect)",
}
#: Files of an output folder that never go to the Hub.
NOT_UPLOADED = re.compile(r"(^|/)(checkpoint-[^/]*|\.[^/]*|training_args\.bin|[^/]*\.(pt|pth|ckpt|pkl))(/|$)")


class HubPushError(RuntimeError):
    """The upload failed; the local result is intact and the message says how to retry."""


def _template_path() -> Path:
    for folder in (
        Path(__file__).resolve().parents[1] / "model_cards",
        Path(__file__).with_name("model_cards"),
    ):
        if (folder / CARD_TEMPLATE).is_file():
            return folder / CARD_TEMPLATE
    raise FileNotFoundError(f"the model card template {CARD_TEMPLATE} is not installed")


def redact_local(value: Any) -> Any:
    """`value` (nested dicts / lists) with local paths replaced by `<local: NAME>` and the user name by
    `<user>`, for records that leave the machine."""
    if isinstance(value, dict):
        return {key: redact_local(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_local(item) for item in value]
    if isinstance(value, str):
        if value.startswith(("/", "~", "./", "../")) or (os.sep in value and os.path.exists(value)):
            return f"<local: {Path(value).name}>"
        user = getpass.getuser()
        if len(user) > 2:
            value = re.sub(rf"\b{re.escape(user)}\b", "<user>", value)
    return value


def _dataset_description(data: dict) -> tuple[str, str, str | None]:
    """(model-index dataset type, readable name, Hub dataset id or None) from a record's `data_args`."""
    dataset = data.get("dataset", "synthetic")
    if dataset == "synthetic":
        name = (
            f"hf-gnft synthetic keywords (eSpeak NG, seed {data.get('synthetic_seed')}, "
            f"{data.get('synthetic_train_size')} train / {data.get('synthetic_test_size')} test clips)"
        )
        return "hf-gnft/synthetic-keywords", name, None
    if dataset in ("audiofolder",) or str(dataset).startswith("<local"):
        return "audiofolder", "a local audio folder", None
    config = f" ({data['dataset_config']})" if data.get("dataset_config") else ""
    return dataset, f"{dataset}{config}", dataset


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def build_model_card(record: dict[str, Any], model_name: str) -> ModelCard:
    """The card of a cleaned model, from its defense record.

    Args:
        record: the `defense_metrics.json` record `run_defense` writes (already free of local paths).
        model_name: the Hub repo id (or a plain name) the card is for.
    """
    record = redact_local(record)
    suspect = record.get("suspect") or {}
    data = record.get("data_args") or {}
    dataset_type, dataset_name, dataset_id = _dataset_description(data)
    split = (record.get("clean_data") or {}).get("eval_split", "test")
    before, after = record["before"], record["after"]
    values = {
        "clean_accuracy": _percent(after.get("clean_accuracy")),
        "clean_accuracy_before": _percent(before.get("clean_accuracy")),
        "attack_success_rate": _percent(after.get("attack_success_rate")),
        "attack_success_rate_before": _percent(before.get("attack_success_rate")),
        "robust_accuracy": _percent(after.get("robust_accuracy")),
        "robust_accuracy_before": _percent(before.get("robust_accuracy")),
        "defense_effectiveness_rating": None if record.get("der") is None else round(record["der"], 4),
    }
    results = [
        EvalResult(
            task_type="audio-classification",
            task_name="Keyword spotting",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=values[metric_type],
        )
        for metric_type, name in CARD_METRICS.items()
        if values[metric_type] is not None
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=suspect.get("name") if suspect.get("source") == "hub" else None,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        pipeline_tag="audio-classification",
        tags=[*CARD_TAGS, *([record["defense"]] if record.get("defense") else [])],
        eval_results=results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(_template_path()),
        model_id=model_name,
        suspect=suspect,
        suspect_description=_describe_suspect(suspect),
        dataset_name=dataset_name,
        record=record,
        metrics=values,
        metric_names=CARD_METRICS,
        hyperparameters=card_settings(record),
        defense_title=record.get("defense_title") or record.get("defense"),
        paper_url=record.get("paper_url"),
        retuned_asr_before=_percent(
            ((record.get("retuning") or {}).get("before") or {}).get("attack_success_rate")
        ),
        retuned_asr_after=_percent(
            ((record.get("retuning") or {}).get("after") or {}).get("attack_success_rate")
        ),
        date=datetime.date.today().isoformat(),
        hf_gnft_version=__version__,
        citation=CITATION,
        trigger_json=json.dumps((record.get("attack") or {}).get("trigger")),
        validation_drops=json.dumps((record.get("knob_search") or {}).get("validation_drop")),
        reinversion=_describe_reinversion(record),
        relapse=_describe_relapse(record),
        retuned_reference=_percent(
            ((record.get("retuning") or {}).get("reference") or {}).get("attack_success_rate")
        ),
    )


def _describe_relapse(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The relapse check of a record, for the card: per clean fine-tune, its learning rate and CA / ASR /
    re-inversion after it (percent; `None` where not measured)."""
    runs = (record.get("relapse") or {}).get("runs")
    if not runs:
        return None
    return [
        {
            "learning_rate": f"{run['learning_rate']:g}",
            "clean_accuracy": _percent(run.get("clean_accuracy")),
            "attack_success_rate": _percent(run.get("attack_success_rate")),
            "reinversion": _percent(run.get("reinversion")),
        }
        for run in runs
    ]


def _describe_reinversion(record: dict[str, Any]) -> dict[str, Any] | None:
    """The re-inversion check of a record, for the card: the suspected target names and the largest success of a
    fresh inversion towards them, on the suspect and on this model (percent)."""
    check = record.get("reinversion")
    if not check:
        return None
    names = (record.get("attack") or {}).get("label_names") or []
    target_names = [names[t] if t < len(names) else str(t) for t in check.get("targets", [])]
    return {
        "targets": target_names,
        "clips": check.get("clips"),
        "clips_from": check.get("clips_from"),
        "before": _percent(check.get("max_success_before")),
        "after": _percent(check.get("max_success_after")),
    }


def card_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings a card lists: the method's own (every setting that is not a generic `TrainingArguments`
    field) and the optimizer's; `defense_metrics.json` keeps all of them."""
    generic = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = {key: value for key, value in (record.get("settings") or {}).items() if key not in generic}
    return {**(record.get("gn") or {}), **own, **(record.get("optim") or {})}


def _describe_suspect(suspect: dict) -> str:
    if suspect.get("source") == "hub":
        pinned = f" at commit `{suspect['commit']}`" if suspect.get("commit") else ""
        revision = f" (revision `{suspect['revision']}`)" if suspect.get("revision") else ""
        return f"[{suspect['name']}](https://huggingface.co/{suspect['name']}){revision}{pinned}"
    digest = f", weights SHA-256 `{suspect['weights_sha256']}`" if suspect.get("weights_sha256") else ""
    return f"a local {suspect.get('model_type') or ''} checkpoint{digest}"


def write_model_card(folder: str | os.PathLike, record: dict[str, Any], model_name: str) -> Path:
    """Render the card into `folder/README.md` and return its path."""
    path = Path(folder) / CARD_FILE
    build_model_card(record, model_name).save(str(path))
    return path


def hub_files(folder: str | os.PathLike) -> list[str]:
    """The files of an output folder that a push uploads (relative paths, sorted): everything except
    checkpoints, hidden files and pickles."""
    root = Path(folder)
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not NOT_UPLOADED.search(path.relative_to(root).as_posix())
    )


@dataclasses.dataclass
class PushResult:
    """What a push sent (or, in a dry run, would send)."""

    repo_id: str
    files: list[str]
    url: str | None = None
    dry_run: bool = False


def push_output_dir(
    folder: str | os.PathLike,
    repo_id: str | None,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload a backdoor-cleaned model (hf-gnft)",
    dry_run: bool = False,
) -> PushResult:
    """Upload a finished output folder (`hub_files(folder)`: the model, feature extractor, card and metrics,
    never checkpoints) to the Hub repo `repo_id`, creating it if needed.

    The token is the standard one (`token`, else `HF_TOKEN` or the stored login) and is never printed or
    written. `HF_ENDPOINT` selects another Hub. `dry_run` lists the files and uploads nothing.

    Raises:
        HubPushError: the upload failed (the folder is left as it is; the message gives the retry command).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubPushError(f"{folder} is not a finished output folder (no config.json); nothing to push")
    files = hub_files(folder)
    repo_id = repo_id or f"<your-namespace>/{folder.name}"
    listing = "\n".join(f"  {name} ({(folder / name).stat().st_size:,} bytes)" for name in files)
    if dry_run:
        print(
            f"Dry run: would upload to {repo_id} these {len(files)} files of {folder}:\n{listing}", flush=True
        )
        return PushResult(repo_id=repo_id, files=files, dry_run=True)
    if repo_id.startswith("<"):
        raise HubPushError("--push_to_hub needs --hub_model_id NAMESPACE/NAME")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, allow_patterns=files, commit_message=commit_message
        )
    except Exception as error:  # noqa: BLE001 - any failure: keep the local result, say how to retry
        raise HubPushError(
            f"uploading {folder} to {repo_id} failed ({type(error).__name__}: {error}). The local result is "
            f"intact; retry with:  hf-gnft push --folder {folder} --hub_model_id {repo_id}"
        ) from error
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %d files to %s (%s)", len(files), repo_id, url)
    return PushResult(repo_id=repo_id, files=files, url=url)


__all__ = [
    "CARD_METRICS",
    "HubPushError",
    "PushResult",
    "build_model_card",
    "hub_files",
    "push_output_dir",
    "redact_local",
    "write_model_card",
]
