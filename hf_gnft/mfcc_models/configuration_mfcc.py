"""The configuration of the GN-FT paper's MFCC keyword-spotting models (one config, a `family` field)."""

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

#: the families of the authors' code (their names, lower-cased: `RNN` -> "rnn", `ResNet` -> "resnet")
MFCC_FAMILIES = ("smallcnn", "largecnn", "smalllstm", "lstmwithattention", "rnn", "resnet")

#: the model type saved in `config.json`; without `import hf_gnft`, transformers names it in its error
MFCC_MODEL_TYPE = "hf_gnft_mfcc"


@strict
class MFCCClassifierConfig(PretrainedConfig):
    """Configuration of an [`MFCCClassifierForAudioClassification`].

    Layer sizes follow the authors' released code (`utils/models.py` of their repository); the config holds only
    what the input decides (the MFCC map's size) and the family. Read `hf_gnft.mfcc_models.modeling_mfcc` for each
    family's layers and where a choice had to be made.

    Args:
        family (`str`, *optional*, defaults to `"smallcnn"`): one of `MFCC_FAMILIES`.
        num_mfcc (`int`, *optional*, defaults to 40): MFCCs per frame (the feature extractor's `feature_size`).
        num_frames (`int`, *optional*, defaults to 101): frames per clip (101 for 1 s at a 10 ms hop).
        rnn_hidden_size (`int`, *optional*, defaults to 768): the `rnn` family's LSTM width (the authors').
    """

    model_type = MFCC_MODEL_TYPE

    family: str = "smallcnn"
    num_mfcc: int = 40
    num_frames: int = 101
    rnn_hidden_size: int = 768

    def validate_architecture(self) -> None:
        """Run after `__init__` (`@strict`): a clear error for an unknown family or a map too small."""
        super().validate_architecture()
        if self.family not in MFCC_FAMILIES:
            raise ValueError(
                f"unknown MFCC model family {self.family!r}; the families are {', '.join(MFCC_FAMILIES)}"
            )
        for name in ("num_mfcc", "num_frames", "rnn_hidden_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (
            self.family in ("smallcnn", "smalllstm", "largecnn", "resnet")
            and min(self.num_frames, self.num_mfcc) < 16
        ):
            raise ValueError(
                f"the {self.family} family pools its map several times: it needs at least 16 frames and 16 MFCCs, "
                f"got {self.num_frames} × {self.num_mfcc}"
            )


__all__ = ["MFCC_FAMILIES", "MFCC_MODEL_TYPE", "MFCCClassifierConfig"]
