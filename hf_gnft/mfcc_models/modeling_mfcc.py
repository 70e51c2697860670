"""The GN-FT paper's keyword-spotting networks on MFCC maps, as transformers models.

The authors' released code (`utils/models.py`) defines six families; each is rebuilt here layer for layer, on the
`(batch, frames, num_mfcc)` map of [`MFCCFeatureExtractor`] (the authors' `[batch, 1, 101, 40]`: time along the
height, coefficients along the width):

- `smallcnn`: three blocks of Conv2d(k 2) → ReLU → BatchNorm → MaxPool (64, 64, 32 channels; pools (1, 3), 2 with
  padding (1, 1), 2 with padding (0, 1)), Dropout 0.4, then Linear 3072 → 128 → ReLU → Dropout 0.5 → classes.
- `largecnn` (AlexNet-like): Conv 96 → MaxPool 2 → Conv 256 → MaxPool 2 → Conv 384 → ReLU → Conv 384 → ReLU →
  Conv 256 → ReLU → MaxPool(3, 2) (all k 3, padding 1), Linear 12288 → 256 → 128 → classes with ReLU and
  Dropout 0.5. As in the authors' code, the first two convolutions have no activation and nothing is normalised.
- `smalllstm`: smallcnn's three blocks and Dropout 0.4, the map read as a sequence (24 steps of 4 × 32 features),
  a 2-layer LSTM of 128, the last step → classes.
- `lstmwithattention`: Conv(1 → 10, k (5, 1)) → ReLU → BatchNorm → Conv(10 → 1, k (5, 1)) → ReLU → BatchNorm
  (both "same" padding), two bidirectional LSTMs of 64 per direction, then the authors' attention: a query from the
  last step (Linear 128 → 128, ReLU), softmax weights over the 128 features (Linear 128 → 128), one score per frame
  (their einsum), and Linear 101 → 64 → ReLU → Dropout 0.5 → 32 → ReLU → classes.
- `rnn`: a 3-layer LSTM of 768 over the frames, the last step → classes.
- `resnet`: a 3 × 3 stem of 16 channels (BatchNorm, ReLU), residual stages [2, 2, 2] of 16, 32, 64 channels (the
  first block of a stage strides 2; its shortcut is a 3 × 3 convolution with BatchNorm, as the authors wrote it),
  Conv 1 × 1 with stride (2, 1), AvgPool 4, Linear 384 → classes.

Choices the authors' code leaves open or that differ on purpose: the three families that end in `log_softmax` in
their code (smallcnn, largecnn, smalllstm) return the logits before it here (their CrossEntropyLoss on
log-probabilities computes the same loss, since log_softmax of log_softmax is log_softmax); the flattened sizes are
computed from the config's map size instead of being constants (the same numbers for 101 × 40); weights start from
PyTorch's default initialisation, which is what their code used.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_mfcc import MFCCClassifierConfig


def _small_conv_blocks() -> nn.Sequential:
    """smallcnn's (and smalllstm's) three Conv → ReLU → BatchNorm → MaxPool blocks and the dropout after them."""
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=2), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d((1, 3)),
        nn.Conv2d(64, 64, kernel_size=2), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2, 2, padding=(1, 1)),
        nn.Conv2d(64, 32, kernel_size=2), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2, 2, padding=(0, 1)),
        nn.Dropout(0.4),
    )  # fmt: skip


@torch.no_grad()
def _output_shape(module: nn.Module, frames: int, coefficients: int) -> torch.Size:
    """The shape of `module`'s output for one `(1, 1, frames, coefficients)` map (BatchNorm statistics untouched)."""
    was_training = module.training
    module.eval()
    try:
        return module(torch.zeros(1, 1, frames, coefficients)).shape
    finally:
        module.train(was_training)


class SmallCNN(nn.Module):
    def __init__(self, config: MFCCClassifierConfig) -> None:
        super().__init__()
        self.features = _small_conv_blocks()
        flat = _output_shape(self.features, config.num_frames, config.num_mfcc).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, config.num_labels)
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(maps.unsqueeze(1)))


class LargeCNN(nn.Module):
    def __init__(self, config: MFCCClassifierConfig) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 96, 3, padding=1), nn.MaxPool2d(2),
            nn.Conv2d(96, 256, 3, padding=1), nn.MaxPool2d(2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )  # fmt: skip
        flat = _output_shape(self.features, config.num_frames, config.num_mfcc).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, config.num_labels),
        )  # fmt: skip

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(maps.unsqueeze(1)))


class SmallLSTM(nn.Module):
    def __init__(self, config: MFCCClassifierConfig) -> None:
        super().__init__()
        self.features = _small_conv_blocks()
        _, channels, _, width = _output_shape(self.features, config.num_frames, config.num_mfcc)
        self.lstm = nn.LSTM(width * channels, 128, num_layers=2, batch_first=True)
        self.classifier = nn.Linear(128, config.num_labels)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        features = self.features(maps.unsqueeze(1))  # (batch, channels, steps, width)
        sequence = features.permute(0, 2, 3, 1).flatten(2)  # (batch, steps, width · channels), as the authors
        output, _ = self.lstm(sequence)
        return self.classifier(output[:, -1])


class LSTMWithAttention(nn.Module):
    def __init__(self, config: MFCCClassifierConfig) -> None:
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv2d(1, 10, (5, 1), padding="same"), nn.ReLU(), nn.BatchNorm2d(10),
            nn.Conv2d(10, 1, (5, 1), padding="same"), nn.ReLU(), nn.BatchNorm2d(1),
        )  # fmt: skip
        self.lstm1 = nn.LSTM(config.num_mfcc, 64, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(128, 64, batch_first=True, bidirectional=True)
        self.query = nn.Linear(128, 128)
        self.scores = nn.Linear(128, 128)
        self.classifier = nn.Sequential(
            nn.Linear(config.num_frames, 64), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, config.num_labels),
        )  # fmt: skip

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        sequence = self.front(maps.unsqueeze(1)).squeeze(1)  # (batch, frames, coefficients)
        sequence, _ = self.lstm1(sequence)
        sequence, _ = self.lstm2(sequence)  # (batch, frames, 128)
        query = torch.relu(self.query(sequence[:, -1]))
        weights = torch.softmax(self.scores(query), dim=1)  # over the 128 features, as in the authors' code
        attended = torch.einsum("ik,ijk->ij", weights, sequence)  # one score per frame
        return self.classifier(attended)


class RNN(nn.Module):
    def __init__(self, config: MFCCClassifierConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(config.num_mfcc, config.rnn_hidden_size, num_layers=3, batch_first=True)
        self.classifier = nn.Linear(config.rnn_hidden_size, config.num_labels)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(maps)
        return self.classifier(output[:, -1])


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:  # a 3 × 3 shortcut, as the authors wrote it
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNet(nn.Module):
    def __init__(self, config: MFCCClassifierConfig, layers: tuple[int, ...] = (2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        stages, channels = [], 16
        for index, (width, blocks) in enumerate(zip((16, 32, 64), layers, strict=True)):
            stride = 1 if index == 0 else 2
            stage = [ResidualBlock(channels, width, stride)]
            stage += [ResidualBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Conv2d(64, 64, 1, stride=(2, 1)), nn.AvgPool2d(4))
        body = nn.Sequential(self.stem, self.stages, self.head)
        flat = _output_shape(body, config.num_frames, config.num_mfcc).numel()
        self.classifier = nn.Linear(flat, config.num_labels)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        out = self.head(self.stages(self.stem(maps.unsqueeze(1))))
        return self.classifier(out.flatten(1))


FAMILY_NETWORKS: dict[str, type[nn.Module]] = {
    "smallcnn": SmallCNN,
    "largecnn": LargeCNN,
    "smalllstm": SmallLSTM,
    "lstmwithattention": LSTMWithAttention,
    "rnn": RNN,
    "resnet": ResNet,
}


class MFCCClassifierPreTrainedModel(PreTrainedModel):
    config_class = MFCCClassifierConfig
    base_model_prefix = "network"
    main_input_name = "input_features"

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialisation (what the authors' models started from), through transformers'
        `initialization` functions, which leave weights loaded from a checkpoint alone."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LSTM):
            bound = 1 / math.sqrt(module.hidden_size)
            for parameter in module.parameters():
                init.uniform_(parameter, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class MFCCClassifierForAudioClassification(MFCCClassifierPreTrainedModel):
    """One of the GN-FT paper's MFCC networks (`config.family`) with a sequence-classification output.

    Takes `input_features` of shape `(batch, num_frames, num_mfcc)` from [`MFCCFeatureExtractor`] and returns a
    [`~transformers.modeling_outputs.SequenceClassifierOutput`] (with the cross-entropy loss when `labels` are
    given).
    """

    def __init__(self, config: MFCCClassifierConfig) -> None:
        super().__init__(config)
        self.network = FAMILY_NETWORKS[config.family](config)
        self.post_init()

    def forward(
        self,
        input_features: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != (
            self.config.num_frames,
            self.config.num_mfcc,
        ):
            raise ValueError(
                f"input_features must be (batch, {self.config.num_frames}, {self.config.num_mfcc}) MFCC maps, got "
                f"shape {tuple(input_features.shape)}: use the model's MFCCFeatureExtractor"
            )
        logits = self.network(input_features)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = ["FAMILY_NETWORKS", "MFCCClassifierForAudioClassification", "MFCCClassifierPreTrainedModel"]
