"""The EfficientMod paper's ablations as configurations of the EfficientMod network.

The paper (Ma et al., ICLR 2024, Sec. 3 and 4.2) derives its block from two modulation
designs and compares it with them and with MBConv. Every comparison here keeps the
network around the block fixed — stem, widths, depths, the expansion ratio r of each
position, the attention blocks of hybrid variants — and swaps only what is ablated:

* ``block``: the block at the modulation positions (on a channels-last map x, C channels)

  - ``"efficientmod"`` (the paper's Fig. 1c):  x ← x + γ ⊙ p( repeat_r(ctx(LN x)) ⊙ v(LN x) ),
    ctx = g(GELU(DWConv_k(f(x)))), v: C→rC.
  - ``"van"`` — VAN's large-kernel attention (Guo et al., 2023), BatchNorm pre-norms::

        x ← x + γ₁ ⊙ A(BN x),   A(y) = p( ctx(f(y)) ⊙ f(y) ) + y,   f = GELU∘FC,
        ctx = FC( DWConv_{k,3}( DWConv_{5,1}(·) ) )           (receptive field 3k)
        x ← x + γ₂ ⊙ MLP(BN x),   MLP = FC(C→rC) → DWConv_3 → GELU → FC(rC→C)

  - ``"focalnet"`` — focal modulation (Yang et al., 2022), LayerNorm pre-norms::

        q, z₀, G = split(f(LN x)),  z_l = GELU(DWConv_{k_l}(z_{l-1})), k_l = 3, 5, ..., k,
        z_{L+1} = GELU(avgpool(z_L)),  ctx = h( Σ_{l=1}^{L+1} G_l ⊙ z_l )
        x ← x + γ₁ ⊙ p( q ⊙ ctx ),   x ← x + γ₂ ⊙ MLP(LN x),  MLP ratio r

  - ``"mbconv"`` — MobileNetV2's inverted residual (Sandler et al., 2018)::

        x ← x + BN(1×1( ReLU6(BN(DWConv_k( ReLU6(BN(1×1_{C→rC} x)) ))) ))
        (no expansion conv when r = 1; its depth-wise conv runs on rC channels, r× the cost
        of EfficientMod's)

  So the MLP that EfficientMod merges into v / p reappears in VAN and FocalNet blocks as
  their own MLP with ratio r; their parameter counts follow from C, r and k alone
  (tests/test_ablations.py recomputes them from these formulas).
* ``context_kernel``: k above (EfficientMod's DWConv; VAN's dilated kernel; FocalNet's
  largest level, so L = (k − 1) / 2 levels; MBConv's depth-wise kernel).
* ``repeat=False``: v reshaped to (r, C) instead of ctx repeated r times (same output).
* ``attention_depths``: the Transformer blocks per stage (which stages have attention).

:data:`ABLATIONS` names the runs of the paper's ablation tables;
``create_model("efficientmod_xxs", **ABLATIONS["van"])`` builds one.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Mlp

from efficientmod.models.efficientmod import MODULATION_BLOCKS, EfficientModCfg
from efficientmod.models.layers import ConvNorm, drop_path_or_identity
from efficientmod.models.registry import create_model, model_info
from efficientmod.viz import register_context_module

__all__ = ["ABLATIONS", "create_ablation", "VANBlock", "FocalNetBlock", "MBConvBlock"]


def _layer_scale(shape: tuple[int, ...], init: float) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, init))


# -- VAN ---------------------------------------------------------------------------------
class LargeKernelContext(nn.Module):
    """VAN's large-kernel attention weights ctx = FC(DWConv_{k,d}(DWConv_{2d−1}(x))), NCHW:
    a (3k)×(3k) receptive field for d = 3 (k = 7 gives VAN's 21×21)."""

    def __init__(self, dim: int, kernel_size: int = 7, dilation: int = 3):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 2 * dilation - 1, padding=dilation - 1, groups=dim)
        self.dwconv_dilated = nn.Conv2d(dim, dim, kernel_size, padding=dilation * (kernel_size // 2),
                                        dilation=dilation, groups=dim)
        self.pointwise = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.dwconv_dilated(self.dwconv(x)))


class DWConvMlp(nn.Module):
    """VAN's MLP: 1×1 (C→hidden), DWConv_3, GELU, 1×1 (hidden→C), NCHW."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class VANBlock(nn.Module):
    """A VAN block (channels-last in and out, NCHW inside as in VAN):
    x ← x + γ₁ ⊙ SpatialAttention(BN x);  x ← x + γ₂ ⊙ MLP(BN x), where
    SpatialAttention(x) = p( ctx(f(x)) ⊙ f(x) ) + x and f = GELU∘FC."""

    def __init__(self, dim: int, mlp_ratio: int, context_kernel: int = 7, drop_path: float = 0.0,
                 layer_scale_init: float = 1e-4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.f = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.ctx = LargeKernelContext(dim, context_kernel)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.layer_scale1 = _layer_scale((dim, 1, 1), layer_scale_init)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = DWConvMlp(dim, dim * mlp_ratio)
        self.layer_scale2 = _layer_scale((dim, 1, 1), layer_scale_init)
        self.drop_path = drop_path_or_identity(drop_path)

    @classmethod
    def from_cfg(cls, cfg: EfficientModCfg, dim: int, expansion_ratio: int, drop_path: float) -> VANBlock:
        return cls(dim, expansion_ratio, cfg.context_kernel, drop_path, cfg.layer_scale_init)

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.act(self.f(x))
        return self.proj(self.ctx(projected) * projected) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = x + self.drop_path(self.layer_scale1 * self.spatial_attention(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale2 * self.mlp(self.norm2(x)))
        return x.permute(0, 2, 3, 1)


# -- FocalNet ----------------------------------------------------------------------------
class FocalContext(nn.Module):
    """FocalNet's hierarchical, gated context (channels last in and out):
    z_l = GELU(DWConv_{2l+1}(z_{l−1})) for l = 1..L, z_{L+1} = GELU(mean_{hw} z_L),
    ctx = h( Σ_l G_l ⊙ z_l ),  h an FC layer (FocalNet's 1×1 conv)."""

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 2 * level + 3, padding=level + 1, groups=dim, bias=False), nn.GELU())
            for level in range(levels)
        )
        self.act = nn.GELU()
        self.h = nn.Linear(dim, dim)

    def forward(self, context: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        context, gates = context.permute(0, 3, 1, 2), gates.permute(0, 3, 1, 2)
        aggregated = 0
        for index, level in enumerate(self.levels):
            context = level(context)
            aggregated = aggregated + context * gates[:, index : index + 1]
        global_context = self.act(context.mean(dim=(2, 3), keepdim=True))
        aggregated = aggregated + global_context * gates[:, -1:]
        return self.h(aggregated.permute(0, 2, 3, 1))


class FocalNetBlock(nn.Module):
    """A FocalNet block (channels last): x ← x + γ₁ ⊙ p( q ⊙ ctx(z₀, G) )[LN x];
    x ← x + γ₂ ⊙ MLP(LN x), with [q, z₀, G] = f(x) (C + C + L + 1 channels)."""

    def __init__(self, dim: int, mlp_ratio: int, context_kernel: int = 7, drop_path: float = 0.0,
                 layer_scale_init: float = 1e-4):
        super().__init__()
        if context_kernel < 3 or context_kernel % 2 == 0:
            raise ValueError(f"focalnet needs an odd context_kernel >= 3 (its largest level); got {context_kernel}")
        levels = (context_kernel - 1) // 2
        self.splits = (dim, dim, levels + 1)
        self.norm1 = nn.LayerNorm(dim)
        self.f = nn.Linear(dim, sum(self.splits))
        self.ctx = FocalContext(dim, levels)
        self.proj = nn.Linear(dim, dim)
        self.layer_scale1 = _layer_scale((dim,), layer_scale_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio, act_layer=nn.GELU)
        self.layer_scale2 = _layer_scale((dim,), layer_scale_init)
        self.drop_path = drop_path_or_identity(drop_path)

    @classmethod
    def from_cfg(cls, cfg: EfficientModCfg, dim: int, expansion_ratio: int, drop_path: float) -> FocalNetBlock:
        return cls(dim, expansion_ratio, cfg.context_kernel, drop_path, cfg.layer_scale_init)

    def focal_modulation(self, x: torch.Tensor) -> torch.Tensor:
        query, context, gates = self.f(x).split(self.splits, dim=-1)
        return self.proj(query * self.ctx(context, gates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale1 * self.focal_modulation(self.norm1(x)))
        return x + self.drop_path(self.layer_scale2 * self.mlp(self.norm2(x)))


# -- MBConv ------------------------------------------------------------------------------
class MBConvBlock(nn.Module):
    """MobileNetV2's inverted residual with a linear bottleneck (channels-last in and out):
    x ← x + ConvBN_1×1( ReLU6(ConvBN_dw,k( ReLU6(ConvBN_1×1,C→rC(x)) )) ); r = 1 drops the
    expansion conv, as MobileNetV2 does for t = 1. No context branch, so no context map."""

    def __init__(self, dim: int, expansion_ratio: int, kernel_size: int = 7, drop_path: float = 0.0):
        super().__init__()
        hidden = dim * expansion_ratio
        expand = [ConvNorm(dim, hidden, 1), nn.ReLU6()] if expansion_ratio > 1 else []
        self.conv = nn.Sequential(
            *expand,
            ConvNorm(hidden, hidden, kernel_size, groups=hidden),
            nn.ReLU6(),
            ConvNorm(hidden, dim, 1),
        )
        self.drop_path = drop_path_or_identity(drop_path)

    @classmethod
    def from_cfg(cls, cfg: EfficientModCfg, dim: int, expansion_ratio: int, drop_path: float) -> MBConvBlock:
        return cls(dim, expansion_ratio, cfg.context_kernel, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


MODULATION_BLOCKS.update(van=VANBlock.from_cfg, focalnet=FocalNetBlock.from_cfg, mbconv=MBConvBlock.from_cfg)


# the context maps of efficientmod.viz: VAN's attention map (NCHW), FocalNet's aggregated context (NHWC)
register_context_module(LargeKernelContext, output_fmt="NCHW")
register_context_module(FocalContext, output_fmt="NHWC")


# -- the named ablations -----------------------------------------------------------------
# name → the EfficientModCfg fields it changes (docs/ablations.md says what each asks)
ABLATIONS: dict[str, dict] = {
    "efficientmod": {},  # the official block (k = 7, Repeat): the reference row
    "van": dict(block="van"),  # paper: EfficientMod vs VAN and FocalNet
    "focalnet": dict(block="focalnet"),
    "mbconv": dict(block="mbconv"),  # paper: EfficientMod vs MBConv
    "kernel3": dict(context_kernel=3),  # the context conv's kernel size
    "kernel5": dict(context_kernel=5),
    "kernel9": dict(context_kernel=9),
    "reshape": dict(repeat=False),  # paper: Repeat vs Reshape
    "no_attention": dict(attention_depths=(0, 0, 0, 0)),  # the hybrids without attention blocks
}


def create_ablation(name: str, base: str = "efficientmod_xxs", **kwargs) -> nn.Module:
    """``base`` with the ablation ``name`` applied (``kwargs`` go to ``create_model``)."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    if model_info(base).family != "efficientmod":
        raise ValueError(f"ablations apply to the EfficientMod family; {base!r} is {model_info(base).family}")
    return create_model(base, **ABLATIONS[name], **kwargs)
