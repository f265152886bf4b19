"""Building blocks shared by the model families.

Only what more than one family (or the deployment code) needs lives here; a block that
belongs to one paper stays in that paper's file.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

__all__ = [
    "drop_path_or_identity", "check_image_input", "ConvNorm", "ConvNormAct", "LinearNorm", "Stage", "fuse_conv_bn",
]


def drop_path_or_identity(rate: float) -> nn.Module:
    """Stochastic depth (timm's DropPath) on a residual branch, or nothing at rate 0."""
    return DropPath(rate) if rate > 0 else nn.Identity()


def check_image_input(x: torch.Tensor, in_chans: int, multiple: int) -> None:
    """Raise a ``ValueError`` stating the expected shape unless ``x`` is N×C×H×W with
    ``C == in_chans`` and both sides multiples of ``multiple``.

    Shape checks are skipped while tracing (torch.fx, torch.jit) or exporting, where sizes
    may be symbolic.
    """
    if (isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export()):
        return
    shape = tuple(x.shape)
    if (
        x.ndim != 4
        or shape[1] != in_chans
        or shape[2] % multiple
        or shape[3] % multiple
        or shape[2] == 0
        or shape[3] == 0
    ):
        sides = f"positive multiples of {multiple}" if multiple > 1 else "positive"
        hint = ""
        if in_chans == 1 and x.ndim == 4 and shape[1] == 3:
            hint = (": this 1-channel (grayscale) model got RGB images; convert them to grayscale first "
                    "(transformers' image-classification pipeline always sends RGB and cannot feed it)")
        raise ValueError(
            f"expected an input of shape N x {in_chans} x H x W with H and W {sides} "
            f"(e.g. 1 x {in_chans} x 224 x 224); got {shape}{hint}"
        )


def fuse_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | nn.BatchNorm1d):
    """Fold an eval-mode BatchNorm that follows a conv/linear into its weight and bias.

    BN(Wx + b) = s·(Wx + b − μ) + β with s = γ / sqrt(σ² + ε), so W' = s·W and
    b' = s·(b − μ) + β (``s`` broadcast over the output channel, dim 0 of ``W``).
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    base = bias if bias is not None else torch.zeros_like(bn.running_mean)
    fused_bias = (base - bn.running_mean) * scale + bn.bias
    return fused_weight, fused_bias


class ConvNorm(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; :meth:`fuse` folds them into one conv."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.conv
        weight, bias = fuse_conv_bn(conv.weight, conv.bias, self.bn)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=True,
            device=weight.device, dtype=weight.dtype,
        )
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        return fused


class ConvNormAct(ConvNorm):
    """:class:`ConvNorm` followed by an activation (SiLU by default); :meth:`fuse` gives the
    folded conv followed by the same activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act_layer: type[nn.Module] = nn.SiLU):
        super().__init__(in_chs, out_chs, kernel_size, stride, groups=groups)
        self.act = act_layer()

    @torch.no_grad()
    def fuse(self) -> nn.Sequential:
        return nn.Sequential(super().fuse(), self.act)


class LinearNorm(nn.Sequential):
    """BatchNorm1d, optional dropout, then Linear (a classifier head); :meth:`fuse` folds
    the norm into the linear layer: W(s·x + t) + b = (W·diag(s))x + (Wt + b)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02,
                 drop: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.dropout = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        nn.init.trunc_normal_(self.linear.weight, std=std)
        if bias:
            nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        bn, linear = self.bn, self.linear
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        fused = nn.Linear(linear.in_features, linear.out_features, device=scale.device, dtype=scale.dtype)
        fused.weight.copy_(linear.weight * scale[None, :])
        base = linear.bias if linear.bias is not None else torch.zeros_like(fused.bias)
        fused.bias.copy_(F.linear(shift, linear.weight) + base)
        return fused


class Stage(nn.Module):
    """One stage of a network: an optional downsampling (``nn.Identity`` for none), then
    its blocks (EfficientMod: modulation then attention blocks; EfficientViT: sandwich
    blocks)."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))
