"""The GN-FT paper's MFCC keyword-spotting models (smallcnn, largecnn, smalllstm, lstmwithattention, rnn, resnet)
as transformers models, and their MFCC feature extractor.

Importing this package (which `import hf_gnft` does) registers them with `AutoConfig`,
`AutoModelForAudioClassification` and `AutoFeatureExtractor`, so that a saved model loads with the Auto classes
from safetensors, without remote code:

    import hf_gnft
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
    model = AutoModelForAudioClassification.from_pretrained("outputs/smallcnn")
    extractor = AutoFeatureExtractor.from_pretrained("outputs/smallcnn")
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

from .configuration_mfcc import MFCC_FAMILIES, MFCC_MODEL_TYPE, MFCCClassifierConfig
from .feature_extraction_mfcc import MFCCFeatureExtractor
from .modeling_mfcc import (
    FAMILY_NETWORKS,
    MFCCClassifierForAudioClassification,
    MFCCClassifierPreTrainedModel,
)

AutoConfig.register(MFCC_MODEL_TYPE, MFCCClassifierConfig, exist_ok=True)
AutoModelForAudioClassification.register(
    MFCCClassifierConfig, MFCCClassifierForAudioClassification, exist_ok=True
)
AutoFeatureExtractor.register(MFCCClassifierConfig, MFCCFeatureExtractor, exist_ok=True)

#: the `architectures` names of the models this package registers: code shipped with `hf_gnft`, which the
#: checkpoint inspection does not report as custom code
REGISTERED_ARCHITECTURES = frozenset({MFCCClassifierForAudioClassification.__name__})

__all__ = [
    "FAMILY_NETWORKS",
    "MFCC_FAMILIES",
    "MFCC_MODEL_TYPE",
    "MFCCClassifierConfig",
    "MFCCClassifierForAudioClassification",
    "MFCCClassifierPreTrainedModel",
    "MFCCFeatureExtractor",
    "REGISTERED_ARCHITECTURES",
]
