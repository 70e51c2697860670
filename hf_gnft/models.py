"""Speech classifiers for keyword spotting: tiny models built from a config, or pretrained checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2FeatureExtractor,
)

from .audio import DEFAULT_SAMPLING_RATE
from .mfcc_models import MFCCClassifierConfig, MFCCFeatureExtractor

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("model_configs")
#: Named configs shipped with the package, built with random weights: tiny speech transformers small enough for 2
#: CPU cores ("tiny-wav2vec2", "tiny-hubert", "tiny-wavlm", "tiny-data2vec-audio") and the GN-FT paper's MFCC
#: networks at the authors' sizes ("smallcnn", "largecnn", "smalllstm", "lstmwithattention", "rnn", "resnet").
TINY_MODELS = {path.stem: path for path in sorted(_CONFIG_DIR.glob("*.json"))}


def load_model_config(name_or_path: str) -> dict:
    """The config dict of a named model (`TINY_MODELS`) or of a JSON file."""
    path = TINY_MODELS.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ValueError(f"no model config {name_or_path!r}; the named ones are {sorted(TINY_MODELS)}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class UntrustedCheckpointError(ValueError):
    """A checkpoint hf-gnft will not load as asked (pickled weights only, and no opt-in)."""


@dataclass
class CheckpointProvenance:
    """Where a checkpoint came from and what it holds, recorded before anything of it runs.

    Args:
        source: "hub" or "local".
        name: the Hub id; `None` for a local folder (its path is not recorded, so records can be shared).
        revision: the Hub revision asked for.
        commit: the Hub commit the revision resolved to (pins the exact files), when known.
        weights_format: "safetensors" or "pickle".
        weights_sha256: SHA-256 of the weight files (a local checkpoint's identity).
        model_type: the config's `model_type`.
        architectures: the config's `architectures`.
        custom_code: what in the config points at code outside transformers (`auto_map` entries,
            architectures transformers does not know); never executed unless `trust_remote_code`.
    """

    source: str
    name: str | None = None
    revision: str | None = None
    commit: str | None = None
    weights_format: str = "safetensors"
    weights_sha256: str | None = None
    model_type: str | None = None
    architectures: list[str] = field(default_factory=list)
    custom_code: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """A one-line description with no local path: the Hub id and commit, or the weights' hash."""
        if self.source == "hub":
            pinned = f"@{self.commit[:12]}" if self.commit else (f"@{self.revision}" if self.revision else "")
            return f"{self.name}{pinned}"
        digest = f", weights sha256 {self.weights_sha256[:16]}…" if self.weights_sha256 else ""
        return f"a local checkpoint ({self.model_type or 'unknown type'}{digest})"


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _custom_code(config: dict) -> list[str]:
    """Entries of a config dict that point at code outside transformers and `hf_gnft` (whose registered models,
    the MFCC networks, are loaded by name from this package, never from the checkpoint)."""
    import transformers

    from .mfcc_models import REGISTERED_ARCHITECTURES

    found = [f"auto_map.{key} = {value}" for key, value in sorted((config.get("auto_map") or {}).items())]
    found += [
        f"architectures: {name} (not a transformers class)"
        for name in config.get("architectures") or []
        if not hasattr(transformers, name) and name not in REGISTERED_ARCHITECTURES
    ]
    return found


def _hub_files(model: str, revision: str | None) -> tuple[list[str], str | None, Path | None]:
    """The files of a Hub repo, the commit its revision resolves to, and its local snapshot folder (cache or
    download; config files only, never weights)."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(model, revision=revision)
        files, commit = [s.rfilename for s in info.siblings or []], info.sha
    except Exception:  # offline or unreachable: the cached snapshot is all there is
        files, commit = [], None
    try:
        snapshot = Path(hf_hub_download(model, "config.json", revision=revision)).parent
    except Exception:
        return files, commit, None
    commit = commit or snapshot.name
    return files or [p.name for p in snapshot.iterdir()], commit, snapshot


class SuspectNotFoundError(FileNotFoundError):
    """The model to load is neither an existing folder nor a Hub model that can be reached."""


def _looks_like_a_path(model: str) -> bool:
    """A name that cannot be a Hub id (`name` or `namespace/name`): absolute, relative with `.`, `~` or `..`,
    more than one `/`, or a backslash."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or not model.strip()


def inspect_checkpoint(
    model: str, *, revision: str | None = None, allow_pickle_weights: bool = False
) -> CheckpointProvenance:
    """Check a checkpoint before loading it, without running anything of it.

    Refuses one that holds only pickled weights (`pytorch_model.bin`, `*.pt`...) unless
    `allow_pickle_weights`; reports config entries that point at custom code (`auto_map`, unknown
    `architectures`); pins a Hub revision to its commit and hashes local weights.

    Raises:
        SuspectNotFoundError: `model` is no existing folder and no reachable Hub model.
        UntrustedCheckpointError: pickled weights only and no opt-in, or no weights at all.
    """
    local = os.path.isdir(model)
    if local:
        folder = Path(model)
        files = [p.name for p in folder.iterdir() if p.is_file()]
        commit = None
    else:
        if _looks_like_a_path(model):
            raise SuspectNotFoundError(
                f"the model folder {model} does not exist ({Path(model).expanduser().absolute()})"
            )
        files, commit, folder = _hub_files(model, revision)
        if not files and folder is None:
            raise SuspectNotFoundError(
                f"{model!r} is neither a local folder (no {Path(model).absolute()}) nor a Hub model that could be "
                "reached (offline, or no such repo); check the path or the Hub id"
            )
    safetensors = [name for name in files if name.endswith(".safetensors")]
    pickles = [
        name for name in files if name.endswith(PICKLE_WEIGHT_SUFFIXES) and name != "training_args.bin"
    ]
    where = model if not local else f"the folder {model}"
    if safetensors:
        weights_format = "safetensors"
    elif pickles:
        if not allow_pickle_weights:
            raise UntrustedCheckpointError(
                f"{where} holds only pickled weights ({', '.join(sorted(pickles))}); hf-gnft does not unpickle "
                "an untrusted checkpoint. Convert it to safetensors in a sandbox, e.g.\n"
                f'  python -c "from transformers import AutoModelForAudioClassification as M; '
                f"M.from_pretrained('{model}', use_safetensors=False).save_pretrained('{model}-safetensors')\"\n"
                "or pass --allow_pickle_weights (transformers then reads it with torch.load(weights_only=True), "
                "which refuses arbitrary objects but is still a pickle parser)."
            )
        weights_format = "pickle"
    elif files or local:
        raise UntrustedCheckpointError(f"{where} holds no model weights (no *.safetensors file)")
    else:  # a Hub id whose file list is unknown (offline, not cached): from_pretrained(use_safetensors=True) decides
        weights_format = "safetensors"
    config: dict = {}
    if folder is not None and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    provenance = CheckpointProvenance(
        source="local" if local else "hub",
        name=None if local else model,
        revision=revision,
        commit=commit,
        weights_format=weights_format,
        weights_sha256=_sha256([folder / n for n in (safetensors or pickles)]) if local else None,
        model_type=config.get("model_type"),
        architectures=list(config.get("architectures") or []),
        custom_code=_custom_code(config),
    )
    if provenance.custom_code:
        logger.warning(
            "The checkpoint's config points at custom code, which is not run unless trust_remote_code is set: %s",
            "; ".join(provenance.custom_code),
        )
    return provenance


def require_safetensors(model: str) -> None:
    """Refuse a checkpoint that holds no safetensors weights (`inspect_checkpoint` without the opt-in)."""
    inspect_checkpoint(model)


def load_suspect_model(
    model: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
    return_provenance: bool = False,
    **model_kwargs,
) -> tuple:
    """Load an untrusted audio classifier and its feature extractor: the one loader every recipe uses.

    Weights from safetensors only (pickled weights only with `allow_pickle_weights`, read with
    `torch.load(weights_only=True)`); code shipped with the checkpoint never runs unless
    `trust_remote_code`; custom-code entries of its config are reported. With `return_provenance`, also
    returns the `CheckpointProvenance` (Hub commit, weights hash) for the output's records. Other keyword
    arguments go to `AutoModelForAudioClassification.from_pretrained`.
    """
    provenance = inspect_checkpoint(model, revision=revision, allow_pickle_weights=allow_pickle_weights)
    revision = provenance.commit if provenance.source == "hub" and provenance.commit else revision
    network = AutoModelForAudioClassification.from_pretrained(
        model,
        revision=revision,
        use_safetensors=provenance.weights_format == "safetensors",
        trust_remote_code=trust_remote_code,
        **model_kwargs,
    )
    extractor = AutoFeatureExtractor.from_pretrained(
        model, revision=revision, trust_remote_code=trust_remote_code
    )
    return (network, extractor, provenance) if return_provenance else (network, extractor)


def _label_maps(label_names: list[str]) -> dict:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }


def build_model(
    model: str,
    label_names: list[str],
    *,
    revision: str | None = None,
    attn_implementation: str = "eager",
    freeze_feature_encoder: bool = True,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> tuple[PreTrainedModel, Wav2Vec2FeatureExtractor]:
    """A randomly initialised or pretrained audio classifier, and its feature extractor.

    Args:
        model: a named tiny config (`TINY_MODELS`), a config JSON file, or a checkpoint (local folder or Hub id)
            for `AutoModelForAudioClassification` (weights from safetensors only).
        label_names: class names in label order; a pretrained head of another size is re-initialised.
        revision: Hub revision of a checkpoint.
        attn_implementation: "eager" (double backprop works on CPU) or "sdpa".
        freeze_feature_encoder: freeze the convolutional feature encoder of a pretrained checkpoint.
        trust_remote_code: run code shipped with the checkpoint (off unless asked for).
        allow_pickle_weights: load a checkpoint that has only pickled weights (see `inspect_checkpoint`).

    Returns:
        `(model, feature_extractor)`.
    """
    if model in TINY_MODELS or model.endswith(".json"):
        values = load_model_config(model)
        config: PretrainedConfig = AutoConfig.for_model(**{**values, **_label_maps(label_names)})
        if isinstance(config, MFCCClassifierConfig):
            network = AutoModelForAudioClassification.from_config(config)
            extractor = MFCCFeatureExtractor(
                feature_size=config.num_mfcc,
                sampling_rate=DEFAULT_SAMPLING_RATE,
                num_samples=(config.num_frames - 1) * 160,  # centred 10 ms frames: 101 frames for 1 s
            )
            return network, extractor
        network = AutoModelForAudioClassification.from_config(config, attn_implementation=attn_implementation)
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=DEFAULT_SAMPLING_RATE,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=False,
        )
        return network, extractor
    if "/" not in model and not _looks_like_a_path(model) and not Path(model).exists():
        raise ValueError(
            f"unknown model {model!r}: not a named model ({', '.join(sorted(TINY_MODELS))}), a config JSON file, a "
            "local checkpoint folder or a Hub id (owner/name)"
        )
    network, extractor = load_suspect_model(
        model,
        revision=revision,
        trust_remote_code=trust_remote_code,
        allow_pickle_weights=allow_pickle_weights,
        attn_implementation=attn_implementation,
        ignore_mismatched_sizes=True,
        **_label_maps(label_names),
    )
    if freeze_feature_encoder and hasattr(network, "freeze_feature_encoder"):
        network.freeze_feature_encoder()
    return network, extractor
