"""Speech classifiers for keyword spotting: tiny models built from a config, or pretrained checkpoints."""

from __future__ import annotations

import json
import logging
import os
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

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("model_configs")
#: Named configs shipped with the package: random-init models small enough for 2 CPU cores.
TINY_MODELS = {path.stem: path for path in sorted(_CONFIG_DIR.glob("*.json"))}


def load_model_config(name_or_path: str) -> dict:
    """The config dict of a named tiny model ("tiny-wav2vec2", "tiny-hubert") or of a JSON file."""
    path = TINY_MODELS.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ValueError(f"no model config {name_or_path!r}; the named ones are {sorted(TINY_MODELS)}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def require_safetensors(model: str) -> None:
    """Refuse a local checkpoint folder that holds no safetensors weights (only pickles, which hf-gnft never loads)."""
    if os.path.isdir(model) and not any(Path(model).glob("*.safetensors")):
        raise ValueError(
            f"{model} holds no safetensors weights; hf-gnft does not unpickle untrusted checkpoints "
            "(convert it with `model.save_pretrained(path, safe_serialization=True)` in a sandbox)"
        )


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

    Returns:
        `(model, feature_extractor)`.
    """
    if model in TINY_MODELS or model.endswith(".json"):
        values = load_model_config(model)
        config: PretrainedConfig = AutoConfig.for_model(**{**values, **_label_maps(label_names)})
        network = AutoModelForAudioClassification.from_config(config, attn_implementation=attn_implementation)
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=DEFAULT_SAMPLING_RATE,
            padding_value=0.0,
            do_normalize=True,
            return_attention_mask=False,
        )
        return network, extractor
    require_safetensors(model)
    network = AutoModelForAudioClassification.from_pretrained(
        model,
        revision=revision,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        ignore_mismatched_sizes=True,
        **_label_maps(label_names),
    )
    extractor = AutoFeatureExtractor.from_pretrained(
        model, revision=revision, trust_remote_code=trust_remote_code
    )
    if freeze_feature_encoder and hasattr(network, "freeze_feature_encoder"):
        network.freeze_feature_encoder()
    return network, extractor
