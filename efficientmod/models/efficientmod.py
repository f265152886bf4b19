"""EfficientMod — "Efficient Modulation for Vision Networks" (Ma et al., ICLR 2024).

The efficient modulation block (the paper's Fig. 1c) on a token map x (channels last)::

    ctx(x) = g( act( DWConv_k( f(x) ) ) )                 f, g: C→C FC layers, k = 7
    v(x)   = act( W_v x )        (no act when r = 1)      W_v: C→rC FC ("sliming")
    block  : x ← x + γ ⊙ p( repeat_r( ctx(LN x) ) ⊙ v(LN x) )    p: rC→C FC, γ layer scale

The context branch runs its depth-wise conv on C channels, r× cheaper than MBConv, and
its output is *repeated* r times along channels (cheaper than reshaping) to match v.
The network has four stages (strides 4, 8, 16, 32): a 7×7/4 conv stem, then 3×3/2 conv
downsampling, each followed by LayerNorm. Hybrid variants append vanilla pre-norm
Transformer blocks (multi-head self-attention + MLP, no layer scale) to the last two
stages; ``s_conv`` is pure convolution.

Variant tables match the official release's state-dict layouts exactly;
:func:`convert_official` maps those checkpoints onto this module's own names.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from efficientmod.checkpoint import register_layout
from efficientmod.fuse import register_fuser, scaled_linear, stacked_outputs, static_hwc
from efficientmod.models.base import Backbone
from efficientmod.models.info import ModelInfo, ReleasedWeights
from efficientmod.models.layers import Stage, drop_path_or_identity
from efficientmod.models.registry import register_variant
from efficientmod.viz import Emit, Query, attention_map, register_attention_reader, register_context_module

__all__ = [
    "EfficientModCfg", "EfficientMod", "ModulationBlock", "AttentionBlock", "FusedModulationBlock",
    "FusedAttentionBlock", "convert_official",
]

PAPER = "Ma et al., Efficient Modulation for Vision Networks, ICLR 2024, Table 2 (arXiv 2403.19963)"


@dataclass(frozen=True, kw_only=True)
class EfficientModCfg:
    """Architecture of one variant.

    ``expansion_ratios[i][j]`` is the ratio r of modulation block j of stage i (so the
    stage has ``len(expansion_ratios[i])`` such blocks); ``attention_depths[i]``
    Transformer blocks follow them, with MLP ratio ``attention_mlp_ratios[i]``.

    Ablation fields (the defaults give the official network; see
    :mod:`efficientmod.models.ablations`): ``block`` names the token-mixing block of the
    modulation positions (a key of :data:`MODULATION_BLOCKS`), ``repeat=False`` matches
    ctx's C channels to v's rC by reshaping v instead of repeating ctx.
    """

    dims: tuple[int, int, int, int]
    expansion_ratios: tuple[tuple[int, ...], ...]
    attention_depths: tuple[int, int, int, int] = (0, 0, 0, 0)
    attention_mlp_ratios: tuple[float, float, float, float] = (4, 4, 4, 4)
    context_kernel: int = 7
    attention_heads: int = 8
    attention_min_head_dim: int = 32
    layer_scale_init: float = 1e-4
    stem_kernel: int = 7
    block: str = "efficientmod"
    repeat: bool = True

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.expansion_ratios)


class ContextBranch(nn.Module):
    """ctx(x) = g(act(DWConv_k(f(x)))) on a channels-last map (B, H, W, C)."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.f = nn.Linear(dim, dim)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.g = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.f(x).permute(0, 3, 1, 2)
        x = self.act(self.dwconv(x))
        return self.g(x.permute(0, 2, 3, 1))


class ModulationBlock(nn.Module):
    """x ← x + γ ⊙ p( repeat_r(ctx(LN x)) ⊙ v(LN x) ), channels last."""

    def __init__(
        self,
        dim: int,
        expansion_ratio: int,
        context_kernel: int = 7,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-4,
        repeat: bool = True,
    ):
        super().__init__()
        self.expansion_ratio = expansion_ratio
        self.repeat = repeat
        self.norm = nn.LayerNorm(dim)
        self.ctx = ContextBranch(dim, context_kernel)
        self.v = nn.Linear(dim, dim * expansion_ratio)
        # The official release applies GELU to v only when it expands the width.
        self.v_act = nn.GELU() if expansion_ratio > 1 else nn.Identity()
        self.proj = nn.Linear(dim * expansion_ratio, dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = drop_path_or_identity(drop_path)

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        """ctx(x) repeated r times along channels, times v(x) (before the projection p).

        With ``repeat=False`` v is reshaped to (r, C) and ctx broadcast over r instead: the
        same numbers, other memory traffic (the paper's Repeat-vs-Reshape ablation)."""
        context, value = self.ctx(x), self.v_act(self.v(x))
        if self.expansion_ratio == 1:
            return context * value
        if self.repeat:
            return context.repeat(1, 1, 1, self.expansion_ratio) * value
        value = value.unflatten(-1, (self.expansion_ratio, -1))
        return (value * context.unsqueeze(-2)).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.layer_scale * self.proj(self.modulate(self.norm(x))))


def _efficientmod_block(cfg: EfficientModCfg, dim: int, expansion_ratio: int, drop_path: float) -> nn.Module:
    return ModulationBlock(dim, expansion_ratio, cfg.context_kernel, drop_path, cfg.layer_scale_init, cfg.repeat)


# cfg.block → builder(cfg, dim, expansion_ratio, drop_path) of the blocks at the modulation
# positions; efficientmod.models.ablations adds the blocks of the papers it compares with.
MODULATION_BLOCKS: dict[str, Callable[..., nn.Module]] = {"efficientmod": _efficientmod_block}


def _frozen(value):
    """Lists (e.g. read back from a save_pretrained config.json) as tuples, nested too, so
    that the configuration stays hashable and compares equal to the original."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


class UnknownOptionError(TypeError, ValueError):
    """A keyword that is no EfficientMod option: a ``TypeError`` like any unexpected keyword
    argument (what timm's factory expects), and a ``ValueError`` like the library's other
    bad-input errors."""


def override_cfg(cfg: EfficientModCfg, overrides: dict) -> EfficientModCfg:
    """``cfg`` with the fields named in ``overrides`` replaced (how ablations are built)."""
    names = [f.name for f in fields(cfg)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UnknownOptionError(f"unknown EfficientMod option(s) {unknown}; the configuration fields are {names}")
    cfg = replace(cfg, **{k: _frozen(v) for k, v in overrides.items()})
    if cfg.block not in MODULATION_BLOCKS:
        raise ValueError(f"unknown block {cfg.block!r}; choose from {sorted(MODULATION_BLOCKS)}")
    return cfg


class MultiHeadSelfAttention(nn.Module):
    """Vanilla MHSA as in the official release: ``heads`` heads of width
    max(C / heads, ``min_head_dim``) (so the inner width can differ from C), no qkv bias,
    softmax(QKᵀ/√d)V through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int = 8, min_head_dim: int = 32):
        super().__init__()
        self.heads = heads
        self.head_dim = max(dim // heads, min_head_dim)
        inner = heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        batch, tokens = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))


class AttentionBlock(nn.Module):
    """Pre-norm Transformer block on a channels-last map:
    x ← x + MHSA(LN x);  x ← x + MLP(LN x)."""

    def __init__(self, dim: int, mlp_ratio: float, heads: int, min_head_dim: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, min_head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.flatten(1, 2)  # (B, H·W, C)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.reshape(shape)


class ConvEmbed(nn.Module):
    """k×k strided conv then LayerNorm: NCHW in, NHWC out."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class ChannelsLastStage(Stage):
    """A stage whose blocks run on channels-last (B, H, W, C) tokens and which hands on an
    NCHW map: what feature extractors read (timm's, torchvision's) and what the next
    stage's strided conv takes. Stage 0 gets the stem's tokens, the others an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x)).permute(0, 3, 1, 2)


class EfficientMod(Backbone):
    """The EfficientMod network (channels-last inside, NCHW in and out)."""

    def __init__(
        self,
        cfg: EfficientModCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        **cfg_overrides,
    ):
        """``cfg_overrides`` replace fields of ``cfg`` (``block="van"``, ``context_kernel=5`` ...)."""
        cfg = override_cfg(cfg, cfg_overrides)
        super().__init__(cfg, num_classes, in_chans, num_features=cfg.dims[-1], global_pool=global_pool)

        self.stem = ConvEmbed(in_chans, cfg.dims[0], cfg.stem_kernel, stride=4)
        total_blocks = sum(cfg.depths) + sum(cfg.attention_depths)
        drop_paths = iter(torch.linspace(0, drop_path_rate, total_blocks, device="cpu").tolist())
        stages, self.feature_info = [], []
        for i, dim in enumerate(cfg.dims):
            blocks: list[nn.Module] = [
                MODULATION_BLOCKS[cfg.block](cfg, dim, r, next(drop_paths)) for r in cfg.expansion_ratios[i]
            ]
            blocks += [
                AttentionBlock(dim, cfg.attention_mlp_ratios[i], cfg.attention_heads,
                               cfg.attention_min_head_dim, next(drop_paths))
                for _ in range(cfg.attention_depths[i])
            ]
            downsample = ConvEmbed(cfg.dims[i - 1], dim, 3, stride=2) if i else nn.Identity()
            stages.append(ChannelsLastStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self._attach_head(nn.Dropout(drop_rate),
                          nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """As the official code: truncated normal (std 0.02) linear weights, zero biases;
        convolutions keep PyTorch's default; LayerNorm 1/0; layer scales 1e-4 (set above)."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- timm interface -------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.downsample", (0,)),
                                                      (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                      (r"^norm", (99999,))],
        )

    def final_map(self, x: torch.Tensor) -> torch.Tensor:
        """The final LayerNorm (over channels) of the last stage's NCHW map: the map whose
        average is the paper's pooled feature."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# -- deployment: the fused inference forms (efficientmod.deploy) ---------------------
class FusedModulationBlock(nn.Module):
    """:class:`ModulationBlock` for inference.

    With y = LN(x), the block x + γ ⊙ p(repeat_r(g(GELU(DWConv(f y)))) ⊙ act(v y)) becomes

    * ``p' = γ ⊙ p``: the layer scale folded into the rows of p;
    * the repeat as a broadcast: (N, r, C) ⊙ (N, 1, C), no r× copy of the context.

    Token-wise layers run on a 2-D (tokens × channels) matrix, which ONNX Runtime fuses
    with the bias into one Gemm. f and v stay two matrix multiplies although they read the
    same y: stacked into one, f would be a strided view of the shared output, and the
    depthwise convolution copies a strided input to a dense one before it runs (ATen's
    convolution does, for the CPU and cuDNN alike) — a copy of the map per block for the
    launch saved (``benchmarks/gpu_h200.md``).
    """

    def __init__(self, block: ModulationBlock):
        super().__init__()
        self.expansion_ratio = block.expansion_ratio
        self.norm = block.norm
        self.f, self.v = block.ctx.f, block.v
        self.dwconv, self.ctx_act, self.g = block.ctx.dwconv, block.ctx.act, block.ctx.g
        self.v_act = block.v_act
        self.proj = scaled_linear(block.proj, block.layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        height, width, dim = static_hwc(x)
        ratio = self.expansion_ratio
        y = self.norm(x).reshape(-1, dim)
        context = self.dwconv(self.f(y).reshape(-1, height, width, dim).permute(0, 3, 1, 2))
        context = self.g(self.ctx_act(context).permute(0, 2, 3, 1).reshape(-1, dim))
        v = self.v_act(self.v(y))
        if ratio == 1:
            modulated = context * v
        else:
            modulated = (context.unsqueeze(1) * v.reshape(-1, ratio, dim)).reshape(-1, ratio * dim)
        return x + self.proj(modulated).reshape(-1, height, width, dim)


class FusedAttentionBlock(nn.Module):
    """:class:`AttentionBlock` for inference: the 1/√d of softmax(QKᵀ/√d)V folded into
    the query rows of the qkv projection.

    Eager / compiled runs use ``scaled_dot_product_attention`` (flash / memory-efficient
    kernels on GPU); ONNX export writes the two matrix multiplies and the softmax out,
    which ONNX Runtime runs without the scaling ops the generic exporter adds.
    """

    def __init__(self, block: AttentionBlock):
        super().__init__()
        attn = block.attn
        self.heads, self.head_dim = attn.heads, attn.head_dim
        inner = self.heads * self.head_dim
        scale = torch.ones(3 * inner, device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        scale[:inner] = self.head_dim ** -0.5
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp
        self.qkv = scaled_linear(attn.qkv, scale)
        self.proj = attn.proj

    def attention(self, tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Multi-head attention of (B·N, C) tokens, N per image."""
        heads, head_dim = self.heads, self.head_dim
        sizes = [heads * head_dim] * 3
        if isinstance(self.qkv, nn.Linear):
            parts = stacked_outputs(self.qkv.weight, self.qkv.bias, tokens, sizes)
        else:  # a linear swapped in by quantisation (torch.ao's dynamic one packs its weight)
            parts = list(self.qkv(tokens).split(sizes, dim=-1))
        q, k, v = [t.reshape(-1, num_tokens, heads, head_dim).transpose(1, 2) for t in parts]
        if not torch.jit.is_scripting():  # (TorchScript compiles only the fused kernel)
            if torch.onnx.is_in_onnx_export():
                x = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
                return self.proj(x.transpose(1, 2).reshape(-1, heads * head_dim))
        x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.proj(x.transpose(1, 2).reshape(-1, heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        height, width, dim = static_hwc(x)
        tokens = x.reshape(-1, dim)
        tokens = tokens + self.attention(self.norm1(tokens), height * width)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.reshape(-1, height, width, dim)


register_fuser(ModulationBlock, FusedModulationBlock)
register_fuser(AttentionBlock, FusedAttentionBlock)


# -- visualisation: context and attention maps (efficientmod.viz) ---------------------
def _mhsa_weights(block: AttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """softmax(QKᵀ/√d) of a hybrid EfficientMod block on its (B, H, W, C) input, from the
    block's own norm and qkv projection."""
    batch, height, width, dim = x.shape
    attn = block.attn
    tokens = block.norm1(x.reshape(batch, height * width, dim))
    qkv = attn.qkv(tokens).reshape(batch, height * width, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    query, key = qkv[0], qkv[1]
    weights = (query @ key.transpose(-2, -1)) * attn.head_dim**-0.5
    return weights.softmax(dim=-1), (height, width)


def _hook_mhsa(block: AttentionBlock, emit: Emit, query: Query) -> list:
    def on_input(module, inputs):
        with torch.no_grad():
            emit(attention_map(*_mhsa_weights(module, inputs[0].detach()), query))

    return [block.register_forward_pre_hook(on_input)]


register_context_module(ContextBranch, output_fmt="NHWC")
register_attention_reader(AttentionBlock, _hook_mhsa)


# -- the official release's checkpoint layout ------------------------------------------
_OFFICIAL_KEY_RULES = [
    # (official pattern, own replacement); applied in order, first match wins
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"^patch_embed\.norm\.", "stem.norm."),
    (r"^layers\.(\d+)\.downsample\.proj\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.conv."),
    (r"^layers\.(\d+)\.downsample\.norm\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.gamma_1$", r"stages.\1.blocks.\2.layer_scale"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.context_layer\.context_list\.0\.", r"stages.\1.blocks.\2.ctx.dwconv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.context_layer\.([fg])\.", r"stages.\1.blocks.\2.ctx.\3."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.blocks.\2.v."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.blocks.\2.proj."),
]
_OFFICIAL_MARKER = re.compile(r"^layers\.\d+\.blocks\.\d+\.mlp\.context_layer\.")
_OFFICIAL_ATTENTION_BLOCK = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.attn\.")


def is_official_layout(state_dict: dict) -> bool:
    """Whether ``state_dict`` uses the official release's names (its ``context_layer`` keys)."""
    return any(_OFFICIAL_MARKER.match(k) for k in state_dict)


def convert_official(state_dict: dict) -> dict:
    """Rename an official EfficientMod state dict (``patch_embed`` / ``layers.i`` /
    ``mlp.context_layer`` ...) to this module's layout; tensors are untouched.

    Attention blocks keep their names (``norm1``, ``attn.qkv``, ``mlp.fc1`` ...) under
    ``stages.i.blocks.j``; the modulation blocks' ``mlp`` is renamed to v / ctx / proj.
    """
    attention_blocks = {m[1] for k in state_dict if (m := _OFFICIAL_ATTENTION_BLOCK.match(k))}
    converted = {}
    for key, value in state_dict.items():
        block = ".".join(key.split(".")[:4])
        rules = [] if block in attention_blocks else _OFFICIAL_KEY_RULES
        new_key = key
        for pattern, replacement in rules:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                break
        converted[re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", new_key)] = value
    return converted


register_layout(EfficientMod, "official EfficientMod release", is_official_layout, convert_official)


# -- variants -------------------------------------------------------------------------
def _alternate(ratio: int, depth: int) -> tuple[int, ...]:
    """1, r, 1, r, ... of length ``depth`` (plain and expanding blocks alternate)."""
    return tuple(1 if j % 2 == 0 else ratio for j in range(depth))


def _stage_ratios(ratio: int, depths: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(_alternate(ratio, d) for d in depths)


VARIANTS = {  # the official release's networks
    "efficientmod_xxs": EfficientModCfg(
        dims=(32, 64, 128, 256), expansion_ratios=_stage_ratios(6, (2, 2, 6, 2)), attention_depths=(0, 0, 1, 2)),
    "efficientmod_xs": EfficientModCfg(
        dims=(32, 64, 144, 288), expansion_ratios=_stage_ratios(4, (3, 3, 4, 2)), attention_depths=(0, 0, 3, 3)),
    "efficientmod_s": EfficientModCfg(
        dims=(32, 64, 144, 312), expansion_ratios=_stage_ratios(6, (4, 4, 8, 4)), attention_depths=(0, 0, 4, 4),
        attention_mlp_ratios=(4, 4, 4, 5)),
    "efficientmod_s_conv": EfficientModCfg(
        dims=(40, 80, 160, 344), expansion_ratios=_stage_ratios(6, (4, 4, 12, 8))),
}
PAPER_TOP1 = dict(efficientmod_xxs=76.0, efficientmod_xs=78.3, efficientmod_s=81.0, efficientmod_s_conv=80.5)
TRAIN_DROP_PATH = dict(efficientmod_xxs=0.0, efficientmod_xs=0.0, efficientmod_s=0.02, efficientmod_s_conv=0.02)
# The authors' checkpoints (with logs), one Google Drive folder per variant (the official
# README's table); trained with distillation except s_conv. No stable file URL exists.
RELEASES = {
    "efficientmod_xxs": ("dist_in1k", "https://drive.google.com/drive/folders/1c0dlnN7w1bHlAsKcJFhGVA2mIhoA6ZHz", 77.1),
    "efficientmod_xs": ("dist_in1k", "https://drive.google.com/drive/folders/1PPQFO891WfJRUiH58NlWOgHDEzDnwC0_", 79.4),
    "efficientmod_s": ("dist_in1k", "https://drive.google.com/drive/folders/1rJs8LcWmdTFmj-IJ0cmlVp_MxGfZFsFk", 81.9),
    "efficientmod_s_conv": ("in1k", "https://drive.google.com/drive/folders/1EY637XRiDPL4AwrVGESJWsK-ZP2GhnaI", 80.5),
}

for _name, _cfg in VARIANTS.items():
    _tag, _folder, _released_top1 = RELEASES[_name]
    register_variant(
        ModelInfo(
            name=_name,
            family="efficientmod",
            model_cls=EfficientMod,
            cfg=_cfg,
            timm_name=_name,
            first_conv="stem.conv",
            classifier="head",
            pool_size=(7, 7),
            paper_name="Efficient Modulation for Vision Networks",
            paper_ids="arXiv:2403.19963",
            license="unknown (the official repository states none)",
            top1=PAPER_TOP1[_name],
            top1_source=PAPER + " (DeiT recipe, no distillation)",
            crop_pct=0.875,  # the official eval: timm 0.6's default crop (the official models set none)
            drop_path_rate=TRAIN_DROP_PATH[_name],
            weights=ReleasedWeights(
                tag=_tag,
                origin_url=_folder,
                top1=_released_top1,
                notes="official release: a Google Drive folder holding the .pth checkpoint and training logs; no "
                      "stable URL: pass the downloaded file with pretrained_cfg_overlay=dict(file=PATH)",
            ),
        )
    )
