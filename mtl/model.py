"""The multi-task U-Net: cell masks, staining pattern and intensity from one encoder.

An smp U-Net (encoder, decoder, 1-channel mask logits) plus two classification heads on the
bottleneck, the encoder's deepest feature map (448 x 12 x 12 for EfficientNet-B4 at 384 px).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import segmentation_models_pytorch as smp
import torch
from torch import nn

from mtl.config import TrainConfig, check_registry
from mtl.labels import PATTERNS

# The model sees grey patches repeated to three channels, normalised as ImageNet images so
# that a local ImageNet-pretrained encoder file can be used as it is.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class SplitFeatures(NamedTuple):
    """The encoder's outputs, where the tasks part ways, cut from what reads them: the
    decoder and the heads read `inputs`, leaf copies of `encoder`'s tensors. A task's loss
    differentiated with respect to `inputs` gives its partial derivative at each feature;
    the gradient aggregations (mtl.balancing.JacobianDescent) take it from there."""

    encoder: tuple[torch.Tensor, ...]  # in the encoder's graph
    inputs: tuple[torch.Tensor, ...]  # detached copies, requiring grad, in the same order


class MultiTaskOutput(NamedTuple):
    mask: torch.Tensor  # (B, 1, H, W) logits
    pattern: torch.Tensor  # (B, 7) logits
    intensity: torch.Tensor  # (B,) logit of "positive"
    split: SplitFeatures | None = None  # forward(..., split=True) only


def _flatten_head(channels: int, side: int, hidden: int, outputs: int) -> nn.Module:
    """The original study's head: the whole bottleneck, flattened, into two dense layers."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


def _pool_head(channels: int, side: int, hidden: int, outputs: int) -> nn.Module:
    """Global average pooling first: far fewer weights, and any input size."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


# TrainConfig.head: name -> head of (bottleneck channels, side, hidden units, outputs).
HEADS = {"flatten": _flatten_head, "pool": _pool_head}
check_registry("head", HEADS)


class MultiTaskUNet(nn.Module):
    def __init__(
        self,
        *,
        encoder: str = "efficientnet-b4",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        head: str = "flatten",
        head_hidden: int = 512,
        image_size: int = 384,
        num_patterns: int = len(PATTERNS),
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
        self.unet = smp.Unet(
            encoder_name=encoder,
            encoder_depth=encoder_depth,
            encoder_weights=None,  # never downloaded; see load_encoder_weights
            decoder_channels=tuple(decoder_channels[:encoder_depth]),
            in_channels=3,
            classes=1,
        )
        if encoder_weights:
            load_encoder_weights(self.unet.encoder, encoder_weights)
        self.encoder_depth = encoder_depth
        channels = self.unet.encoder.out_channels[-1]
        side = image_size // 2**encoder_depth
        self.pattern_head = HEADS[head](channels, side, head_hidden, num_patterns)
        self.intensity_head = HEADS[head](channels, side, head_hidden, 1)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self._shared: list[nn.Parameter] | None = None
        self._encoder: list[nn.Parameter] | None = None
        self.input_format = torch.contiguous_format  # see channels_last()

    @classmethod
    def from_config(cls, config: TrainConfig) -> MultiTaskUNet:
        return cls(
            encoder=config.encoder,
            encoder_depth=config.encoder_depth,
            encoder_weights=config.encoder_weights,
            decoder_channels=config.decoder_channels,
            head=config.head,
            head_hidden=config.head_hidden,
            image_size=config.image_size,
        )

    def channels_last(self) -> MultiTaskUNet:
        """Weights and the encoder's input in NHWC, the layout tensor cores run fastest.

        The input is converted after normalisation: a 1-channel batch is NCHW and NHWC at
        once, and the 3 channels expanded from it come out plain NCHW.
        """
        self.input_format = torch.channels_last
        return self.to(memory_format=torch.channels_last)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) uint8 or [0, 1] floats -> the encoder's normalised 3-channel input."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        normalised = (images.expand(-1, 3, -1, -1) - self.mean) / self.std
        return normalised.contiguous(memory_format=self.input_format)

    def forward(self, images: torch.Tensor, split: bool = False) -> MultiTaskOutput:
        """The three outputs; `split`: the decoder and the heads read leaf copies of the
        encoder's outputs (`MultiTaskOutput.split`), so that backward stops there."""
        features = self.unet.encoder(self.normalise(images))
        cut = None
        if split:
            # The first "feature" is the input itself, which no parameter made.
            made = [f for f in features if f.requires_grad]
            leaves = [f.detach().requires_grad_() for f in made]
            cut = SplitFeatures(encoder=tuple(made), inputs=tuple(leaves))
            copies = iter(leaves)
            features = [next(copies) if f.requires_grad else f for f in features]
        mask = self.unet.segmentation_head(self.unet.decoder(features))
        bottleneck = features[-1]
        return MultiTaskOutput(
            mask=mask,
            pattern=self.pattern_head(bottleneck),
            intensity=self.intensity_head(bottleneck).squeeze(1),
            split=cut,
        )

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every encoder parameter that the features depend on, in the encoder's order: what
        the tasks share (the Jacobian balancers aggregate the tasks' gradients on them)."""
        if self._encoder is None:
            parameters = [p for p in self.unet.encoder.parameters() if p.requires_grad]
            self._encoder = self._reached(parameters, deepest_only=False)
        return self._encoder

    def shared_parameters(self) -> list[nn.Parameter]:
        """W for GradNorm: the last weight tensor of the encoder's final block."""
        if self._shared is None:
            weights = [p for p in self.unet.encoder.parameters() if p.dim() > 1]
            self._shared = self._reached(weights, deepest_only=True)[-1:]
        return self._shared

    def _reached(self, parameters: list[nn.Parameter], deepest_only: bool) -> list[nn.Parameter]:
        """Those of `parameters` that the encoder's outputs (or only its deepest, the
        bottleneck) depend on, found by asking autograd on a probe, so that parameters an
        encoder keeps but never uses (EfficientNet's `_conv_head`) are skipped."""
        side = 2 * 2**self.encoder_depth
        probe = torch.zeros(1, 1, side, side, device=self.mean.device)
        was_training = self.training
        self.eval()
        with torch.enable_grad():
            features = self.unet.encoder(self.normalise(probe))
            features = features[-1:] if deepest_only else features
            total = sum(f.sum() for f in features if f.requires_grad)
            grads = torch.autograd.grad(total, parameters, allow_unused=True)
        self.train(was_training)
        return [p for p, g in zip(parameters, grads, strict=True) if g is not None]


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load a local encoder state dict (e.g. ImageNet weights saved with torch.save)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder_weights: no such file {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"encoder_weights {path}: missing keys, e.g. {missing[:3]}")
    del unexpected  # classifier weights of an ImageNet checkpoint are expected and unused
