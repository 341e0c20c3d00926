"""DpnUNet: a 2-D / 2.5-D U-Net whose blocks are dual-path blocks (Chen et al., NeurIPS 2017).

Why our own network: the seed study's model (RT-Mind-AI, after Wu et al.) is a U-Net built from
dual-path-network (DPN) blocks; no maintained library ships that combination with the knobs the
toolkit needs (2.5-D input, presets small enough for a 2-core CPU, a re-initialisable head).
``segmentation_models_pytorch.Unet("dpn68")`` puts a DPN *encoder* under a plain decoder; it is
the baseline of ``benchmarks/gpu_bench.py``, not a dependency.

Architecture (``L = len(widths)`` levels, finest first; ``R_l`` residual width, ``g_l`` growth)::

    input (N, in_slices, H, W)        k adjacent axial slices as channels, HU window → [-1, 1]
      + 2 coordinate channels           row/column position from the centre (``coordinates``)
      stem: 3x3 conv → R_0 channels
      encoder level l: blocks[l] dual-path blocks; the first one projects (and, for l > 0,
                       halves the resolution with stride 2)          → skip_l
      decoder level l = L-2 … 0: 2x2 transposed conv (x2) → R_l, concatenate skip_l,
                       decoder_blocks dual-path blocks
      head: GroupNorm-ReLU, 1x1 conv → num_classes logits (N, C, H, W)

A dual-path block (pre-activation: GroupNorm → ReLU → conv) reads the concatenation
``[residual (R), dense (D)]`` and computes ``1x1 → 3x3 grouped (cardinality `groups`) → 1x1``
giving ``R + g`` channels. The first ``R`` are *added* to the residual path (ResNeXt: feature
re-use) and the last ``g`` are *concatenated* to the dense path (DenseNet: new features), so the
output has ``R + D + g`` channels. The first block of a level projects its input with a 1x1 conv
to ``R`` residual and ``2g`` dense channels (strided where the level halves the resolution), as
in DPN. After ``b`` blocks a level has ``R + (b + 2) g`` channels.

Group normalisation instead of batch normalisation: statistics per slice, so that results do not
depend on the batch size, training equals inference, and distributed training over several
processes gives the same numbers as one process with the same global batch.

Presets (``dlas.model.PRESETS``; parameter counts for 6 classes — the rectal structure set plus
background — and 3 input slices)::

    cpu   widths (16, 32, 48, 64, 96), blocks (1, 1, 1, 2, 2), growth (8, 8, 8, 16, 16),
          groups 8: 0.30 M parameters (296,214). Five levels for a wide receptive field (about
          100 pixels) at the cost of four: the time goes into the full-resolution level.
    full  widths (32, 64, 128, 256, 384), blocks (1, 2, 2, 3, 2), growth (16, 16, 32, 32, 64),
          groups 16: 3.58 M parameters (3,575,334)

Measured speeds are in ``benchmarks/results/``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlas.model.config import DpnUNetConfig

__all__ = ["DpnUNet", "DualPathBlock", "count_parameters"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class _NormActConv(nn.Sequential):
    """Pre-activation unit: GroupNorm → ReLU → convolution."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        *,
        norm_groups: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            _norm(in_ch, norm_groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(
                in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
            ),
        )


class DualPathBlock(nn.Module):
    """One dual-path block (see the module docstring).

    Parameters
    ----------
    in_ch
        Channels of the input ``[residual, dense]``.
    width
        Residual width ``R``.
    growth
        Dense growth ``g``.
    mid
        Width of the grouped 3x3 convolution.
    groups
        Cardinality of the grouped convolution.
    project
        Project the input to ``R`` residual and ``2g`` dense channels first (the first block of
        a level); required whenever ``in_ch`` does not start with a residual path of width ``R``.
    stride
        1, or 2 to halve the resolution (projecting blocks only).
    """

    def __init__(
        self,
        in_ch: int,
        width: int,
        growth: int,
        mid: int,
        groups: int,
        *,
        project: bool,
        stride: int = 1,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        if stride != 1 and not project:
            raise ValueError("only a projecting block may change the resolution")
        self.width = width
        self.project: nn.Module | None = (
            _NormActConv(in_ch, width + 2 * growth, 1, norm_groups=norm_groups, stride=stride)
            if project
            else None
        )
        self.reduce = _NormActConv(in_ch, mid, 1, norm_groups=norm_groups)
        self.grouped = _NormActConv(
            mid, mid, 3, norm_groups=norm_groups, stride=stride, groups=groups
        )
        self.expand = _NormActConv(mid, width + growth, 1, norm_groups=norm_groups)
        self.out_channels = (width + 2 * growth if project else in_ch) + growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[residual, dense]`` in, ``[residual + f_res, dense, f_dense]`` out."""
        shortcut = self.project(x) if self.project is not None else x
        out = self.expand(self.grouped(self.reduce(x)))
        r = self.width
        residual = shortcut[:, :r] + out[:, :r]
        return torch.cat([residual, shortcut[:, r:], out[:, r:]], dim=1)


class DpnUNet(nn.Module):
    """The network; ``forward`` maps (N, in_slices, H, W) to logits (N, num_classes, H, W).

    ``H`` and ``W`` must be multiples of ``config.size_multiple``. Submodules are named
    ``stem``, ``encoder``, ``decoder`` and ``head`` so that training can freeze the encoder or
    re-initialise the head by name.
    """

    def __init__(self, config: DpnUNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        ng = c.norm_groups
        extra = 2 if c.coordinates else 0
        self.stem = nn.Conv2d(c.in_slices + extra, c.widths[0], 3, padding=1, bias=False)
        self.encoder = nn.ModuleList()
        skip_channels: list[int] = []
        channels = c.widths[0]
        for level, (width, n_blocks, growth) in enumerate(
            zip(c.widths, c.blocks, c.growth, strict=True)
        ):
            blocks: list[nn.Module] = []
            for b in range(n_blocks):
                block = DualPathBlock(
                    channels,
                    width,
                    growth,
                    c.mid_width(width),
                    c.groups,
                    project=b == 0,
                    stride=2 if (b == 0 and level > 0) else 1,
                    norm_groups=ng,
                )
                blocks.append(block)
                channels = block.out_channels
            self.encoder.append(nn.Sequential(*blocks))
            skip_channels.append(channels)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(c.levels - 2, -1, -1):
            width, growth = c.widths[level], c.growth[level]
            up = nn.Sequential(
                _norm(channels, ng),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(channels, width, 2, stride=2, bias=False),
            )
            self.up.append(up)
            channels = width + skip_channels[level]
            blocks = []
            for b in range(c.decoder_blocks):
                block = DualPathBlock(
                    channels,
                    width,
                    growth,
                    c.mid_width(width),
                    c.groups,
                    project=b == 0,
                    norm_groups=ng,
                )
                blocks.append(block)
                channels = block.out_channels
            self.decoder.append(nn.Sequential(*blocks))
        self.head = nn.Sequential(
            _norm(channels, ng),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, c.num_classes, 1, bias=True),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise all weights (Kaiming normal convolutions, unit norms, zero biases; the
        last convolution small, so that training starts from near-uniform class scores)."""
        for module in self.modules():
            self._init_module(module)
        self._init_classifier()

    def reset_head(self) -> None:
        """Re-initialise the output head only (fine-tuning to another structure set)."""
        for module in self.head.modules():
            self._init_module(module)
        self._init_classifier()

    def _init_classifier(self) -> None:
        classifier = self.head[-1]
        assert isinstance(classifier, nn.Conv2d)
        nn.init.normal_(classifier.weight, std=0.01)
        if classifier.bias is not None:
            nn.init.zeros_(classifier.bias)

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) of input (N, in_slices, H, W)."""
        m = self.config.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {m}")
        if self.config.coordinates:
            x = torch.cat([x, _coordinates(x)], dim=1)
        out = self.stem(x)
        skips: list[torch.Tensor] = []
        for level in self.encoder:
            out = level(out)
            skips.append(out)
        for i, (up, level) in enumerate(zip(self.up, self.decoder, strict=True)):
            skip = skips[-2 - i]
            out = level(torch.cat([up(out), skip], dim=1))
        logits: torch.Tensor = self.head(out)
        return logits

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part: ``encoder`` (stem and encoder), ``decoder`` (up-sampling and
        decoder blocks) and ``head``."""
        return {
            "encoder": [*self.stem.parameters(), *self.encoder.parameters()],
            "decoder": [*self.up.parameters(), *self.decoder.parameters()],
            "head": list(self.head.parameters()),
        }


#: Pixels per unit of the coordinate channels.
_COORDINATE_SCALE = 32.0


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """Row and column position of every pixel relative to the centre, (N, 2, H, W)."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device, dtype=x.dtype) - (h - 1) / 2) / _COORDINATE_SCALE
    cols = (torch.arange(w, device=x.device, dtype=x.dtype) - (w - 1) / 2) / _COORDINATE_SCALE
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid.expand(x.shape[0], 2, h, w)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters())
