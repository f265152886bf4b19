"""MobileViTv2 — "Separable Self-attention for Mobile Vision Transformers" (Mehta &
Rastegari, TMLR 2023, arXiv 2206.02680).

*Separable self-attention* (the paper's Fig. 4c / Eq. 4–5) replaces multi-head attention's
O(k²) token-token matrix by one context vector, O(k) in the number of tokens k::

    c_s = softmax_k( x W_I )                     context scores, one per token (d → 1)
    c_v = Σ_k c_s(k) · (x W_K)(k)                context vector (d)
    y   = ( ReLU(x W_V) ⊙ c_v ) W_O               broadcast to every token

A *linear transformer layer* is pre-norm: x ← x + Attn(LN x); x ← x + FFN(LN x), the
"LayerNorm" being a GroupNorm with one group over (C, P, N) as in the reference, the FFN
1×1 convs with SiLU.  A MobileViTv2 block: local 3×3 DW conv + 1×1 projection to d = C/2,
unfold into non-overlapping 2×2 patches (P = 4 pixels per patch, attention over the N
patches separately for each pixel position), the transformer layers, a norm, fold back, a
1×1 ConvNorm to C — MobileViT's skip connection and fusion are gone.

The network: a 3×3 stride-2 stem, MobileNetV2 inverted-residual stages at strides 2 and 4,
then three stages (strides 8, 16, 32) of an inverted residual followed by a MobileViTv2
block; widths (64, 128, 256, 384, 512) scaled by the width multiplier α ∈ [0.5, 2].

The module layout holds timm's ``mobilevitv2_*`` weights; :func:`convert_timm` renames them,
:func:`convert_official` the official release's (apple/ml-cvnets).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvMlp, make_divisible

from efficientmod.checkpoint import register_layout, rename_keys
from efficientmod.fuse import conv1x1_from, register_fuser
from efficientmod.models.base import Backbone
from efficientmod.models.info import ModelInfo, ReleasedWeights
from efficientmod.models.layers import ConvNorm, ConvNormAct, drop_path_or_identity
from efficientmod.models.registry import register_variant
from efficientmod.viz import Emit, Query, check_query, register_attention_reader

__all__ = [
    "MobileViTv2Cfg", "MobileViTv2", "SeparableSelfAttention", "MobileViTv2Block", "FusedSeparableSelfAttention",
    "FusedLinearTransformerLayer", "FusedMobileViTv2Block", "convert_timm", "convert_official",
]

PAPER = ("Mehta & Rastegari, Separable Self-attention for Mobile Vision Transformers, "
         "TMLR 2023 (arXiv 2206.02680), ImageNet-1K table")


@dataclass(frozen=True, kw_only=True)
class MobileViTv2Cfg:
    """Architecture of one variant: the width multiplier α scales ``base_widths`` (stage
    outputs) and ``base_stem_width``; stage i has ``depths[i]`` inverted residuals, then a
    MobileViTv2 block of ``attention_depths[i]`` layers where that is > 0."""

    width_multiplier: float
    base_widths: tuple[int, ...] = (64, 128, 256, 384, 512)
    base_stem_width: int = 32
    depths: tuple[int, ...] = (1, 2, 1, 1, 1)
    attention_depths: tuple[int, ...] = (0, 0, 2, 4, 3)
    expand_ratio: float = 2.0
    attention_width_ratio: float = 0.5
    ffn_ratio: float = 2.0
    patch_size: int = 2

    @property
    def widths(self) -> tuple[int, ...]:
        """Stage widths as the reference rounds them: α·w to a multiple of 16 for the first
        stage, of 8 for the others, never more than 10 % below α·w."""
        alpha = self.width_multiplier
        return tuple(make_divisible(w * alpha, 16 if i == 0 else 8) for i, w in enumerate(self.base_widths))

    @property
    def stem_width(self) -> int:
        """α·32 bounded to [16, 64], then rounded to a multiple of 8 (at least 16)."""
        return make_divisible(min(max(self.base_stem_width * self.width_multiplier, 16), 64), 8, min_value=16)

    def attention_width(self, stage: int) -> int:
        """d of stage ``stage``'s MobileViTv2 block: α·(ratio·base width) rounded to a multiple of 8."""
        return make_divisible(self.base_widths[stage] * self.attention_width_ratio * self.width_multiplier, 8)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand + SiLU, 3×3 DW (stride s) + SiLU, linear 1×1 project;
    residual when the shape is kept."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: float, drop_path: float = 0.0):
        super().__init__()
        hidden = make_divisible(in_chs * expand_ratio)
        self.expand = ConvNormAct(in_chs, hidden)
        self.depthwise = ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvNorm(hidden, out_chs)
        self.has_residual = in_chs == out_chs and stride == 1
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + self.drop_path(out) if self.has_residual else out


class SeparableSelfAttention(nn.Module):
    """The module docstring's c_s, c_v, y on unfolded maps (B, d, P, N): W_I, W_K, W_V are
    one 1×1 conv (d → 1 + 2d), softmax and sum run over the N patches."""

    def __init__(self, dim: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.qkv = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, key, value = self.qkv(x).split([1, self.dim, self.dim], dim=1)
        scores = self.attn_drop(F.softmax(scores, dim=-1))
        context = (key * scores).sum(dim=-1, keepdim=True)
        return self.proj_drop(self.proj(F.relu(value) * context))


class LinearTransformerLayer(nn.Module):
    """x ← x + Attn(GN₁ x);  x ← x + FFN(GN₁ x)  on (B, d, P, N)."""

    def __init__(self, dim: int, ffn_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = SeparableSelfAttention(dim)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = ConvMlp(dim, int(dim * ffn_ratio // 16 * 16), act_layer=nn.SiLU)  # to 16s, as ml-cvnets
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def unfold_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, P, N): P = patch² pixel positions, N = (H/patch)(W/patch) patches."""
    batch, channels = x.shape[0], x.shape[1]
    rows, cols = x.shape[2] // patch, x.shape[3] // patch
    x = x.reshape(batch, channels, rows, patch, cols, patch)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels, patch * patch, rows * cols)


def fold_patches(x: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`unfold_patches`."""
    batch, channels = x.shape[0], x.shape[1]
    x = x.reshape(batch, channels, patch, patch, height // patch, width // patch)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height, width)


def resize_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, C, H, W) resized up to sides that are multiples of ``multiple`` (bilinear,
    corners aligned), as the reference does; unchanged when they already are."""
    # (n + p − 1) // p rounds up; also when exported, where integer division truncates
    height = (x.shape[2] + multiple - 1) // multiple * multiple
    width = (x.shape[3] + multiple - 1) // multiple * multiple
    if height != x.shape[2] or width != x.shape[3]:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)
    return x


# A shape-dependent branch: torch.fx keeps this as a call (a leaf) instead of tracing into it.
torch.fx.wrap("resize_to_multiple")


class MobileViTv2Block(nn.Module):
    """Local DW 3×3 + SiLU and 1×1 (C → d), unfold, transformer layers, GN, fold, 1×1 (d → C).

    A map whose sides are not multiples of the patch size (the 7×7 stride-32 map of a 224²
    input) is first resized up to the next multiple (bilinear, corners aligned), and the
    block outputs that larger map — the reference's behaviour.
    """

    def __init__(self, dim: int, attention_dim: int, depth: int, ffn_ratio: float, patch_size: int,
                 drop_path: float = 0.0):
        super().__init__()
        self.patch_size = patch_size
        self.local_dw = ConvNormAct(dim, dim, 3, groups=dim)
        self.local_proj = nn.Conv2d(dim, attention_dim, 1, bias=False)
        self.transformer = nn.Sequential(
            *[LinearTransformerLayer(attention_dim, ffn_ratio, drop_path) for _ in range(depth)])
        self.norm = nn.GroupNorm(1, attention_dim)
        self.out_proj = ConvNorm(attention_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.patch_size
        x = resize_to_multiple(x, patch)
        height, width = x.shape[2], x.shape[3]
        x = self.local_proj(self.local_dw(x))
        x = self.norm(self.transformer(unfold_patches(x, patch)))
        return self.out_proj(fold_patches(x, patch, height, width))


class MobileViTv2(Backbone):
    """The MobileViTv2 network (NCHW throughout); five feature maps at strides 2–32.

    Inputs of any size run, as in the reference: every strided conv rounds up, and a
    MobileViTv2 block resizes a map with an odd side up to even sides first (see
    :class:`MobileViTv2Block`); multiples of 64 keep every map at its exact stride.
    """

    input_multiple = 1

    def __init__(
        self,
        cfg: MobileViTv2Cfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__(cfg, num_classes, in_chans, num_features=cfg.widths[-1], global_pool=global_pool)

        self.stem = ConvNormAct(in_chans, cfg.stem_width, 3, stride=2)
        blocks_per_stage = [d + (a > 0) for d, a in zip(cfg.depths, cfg.attention_depths, strict=True)]
        drop_paths = iter(torch.linspace(0, drop_path_rate, sum(blocks_per_stage), device="cpu").tolist())
        in_chs, stages, self.feature_info = cfg.stem_width, [], []
        stage_shapes = zip(cfg.widths, cfg.depths, cfg.attention_depths, strict=True)
        for i, (width, depth, attention_depth) in enumerate(stage_shapes):
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(InvertedResidual(in_chs, width, stride if j == 0 else 1, cfg.expand_ratio,
                                               next(drop_paths)))
                in_chs = width
            if attention_depth:
                blocks.append(MobileViTv2Block(
                    width, cfg.attention_width(i), attention_depth,
                    cfg.ffn_ratio, cfg.patch_size, next(drop_paths)))
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self._attach_head(nn.Dropout(drop_rate),
                          nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())
        self.apply(self._init_weights)
        for module in self.modules():  # residual blocks start as identities
            if isinstance(module, InvertedResidual) and module.has_residual:
                nn.init.zeros_(module.project.bn.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """As the reference: convs N(0, 2/fan_out), linear N(0, 0.01²), zero biases."""
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- timm interface -------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)",
        )


# -- deployment: the fused inference forms (efficientmod.deploy) -------------------------
class MapNorm(nn.Module):
    """GroupNorm with one group and no affine: (x − mean) / std over all of (C, P, N),
    written as ``layer_norm`` over those dimensions (one LayerNormalization node in ONNX,
    instead of GroupNorm's reshape → InstanceNormalization → reshape)."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, [int(size) for size in x.shape[1:]], eps=self.eps)


@torch.no_grad()
def _fold_norm_affine(norm: nn.GroupNorm, conv: nn.Conv2d) -> tuple[MapNorm, nn.Conv2d]:
    """conv(γ ⊙ n + β) = (W·diag γ) n + (W β + b): the per-channel affine of ``norm``
    moved into the following 1×1 ``conv``."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("only a 1x1 dense conv can absorb a norm's affine")
    bias = conv.weight[:, :, 0, 0] @ norm.bias + (conv.bias if conv.bias is not None else 0)
    return MapNorm(norm.eps), conv1x1_from(conv.weight * norm.weight[None, :, None, None], bias)


class FusedSeparableSelfAttention(nn.Module):
    """:class:`SeparableSelfAttention` for inference, on an input ``n`` already normalised (its
    norm's affine folded into the projections).

    The context vector is linear in the keys and the scores sum to one, so
    c_v = Σ_k c_s(k) (W_K n_k + b_K) = W_K (Σ_k c_s(k) n_k) + b_K: the key projection runs
    on one pooled token per pixel position instead of on all N patches — the (d → 1 + 2d)
    projection shrinks to (d → 1 + d).
    """

    def __init__(self, attn: SeparableSelfAttention, norm: nn.GroupNorm):
        super().__init__()
        dim = attn.dim
        self.norm, qkv = _fold_norm_affine(norm, attn.qkv)
        self.score_value = _conv_rows(qkv, [slice(0, 1), slice(1 + dim, 1 + 2 * dim)])
        self.key = _conv_rows(qkv, [slice(1, 1 + dim)])
        self.proj = attn.proj
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, P, N), not yet normalised
        x = self.norm(x)
        scores, value = self.score_value(x).split([1, self.dim], dim=1)
        pooled = (x * scores.softmax(dim=-1)).sum(dim=-1, keepdim=True)
        return self.proj(F.relu(value) * self.key(pooled))


@torch.no_grad()
def _conv_rows(conv: nn.Conv2d, rows: list[slice]) -> nn.Conv2d:
    """A 1×1 conv computing the given output channels of ``conv``, concatenated."""
    return conv1x1_from(torch.cat([conv.weight[r] for r in rows]), torch.cat([conv.bias[r] for r in rows]))


class FusedLinearTransformerLayer(nn.Module):
    """:class:`LinearTransformerLayer` for inference: both GroupNorms lose their affine (into
    the attention's projections and the FFN's first 1×1 conv); the attention pools its keys
    (see :class:`FusedSeparableSelfAttention`)."""

    def __init__(self, layer: LinearTransformerLayer):
        super().__init__()
        self.attn = FusedSeparableSelfAttention(layer.attn, layer.norm1)  # normalises its input itself
        self.norm2, fc1 = _fold_norm_affine(layer.norm2, layer.mlp.fc1)
        self.mlp = layer.mlp
        self.mlp.fc1 = fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(self.norm2(x))


class FusedMobileViTv2Block(nn.Module):
    """:class:`MobileViTv2Block` for inference: the last GroupNorm's affine folded into the
    output projection (the patch fold between them only moves pixels, so the per-channel
    affine commutes with it)."""

    def __init__(self, block: MobileViTv2Block):
        super().__init__()
        self.patch_size = block.patch_size
        self.local_dw, self.local_proj, self.transformer = block.local_dw, block.local_proj, block.transformer
        self.norm, self.out_proj = _fold_norm_affine(block.norm, block.out_proj.fuse())

    forward = MobileViTv2Block.forward  # the same computation on the folded parts


register_fuser(LinearTransformerLayer, FusedLinearTransformerLayer)
register_fuser(MobileViTv2Block, FusedMobileViTv2Block)


# -- visualisation: attention maps (efficientmod.viz) -----------------------------------
def _separable_map(scores: torch.Tensor, patch: int, height: int, width: int, query: Query) -> torch.Tensor:
    """MobileViTv2's context scores c_s (B, 1, P, N), softmax over the N patches separately
    for each of the P pixel positions, as attention on the h×w map: token (p, n) gives
    weight c_s(p, n') to every token (p, n'). The mean over queries is c_s / P; a query
    sees the tokens of its own pixel position p."""
    received = fold_patches(scores, patch, height, width)[:, 0]
    if query is None:
        return received / (patch * patch)
    y, x = check_query(query)
    row, col = round(y * (height - 1)), round(x * (width - 1))
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    same_position = (rows % patch == row % patch) & (cols % patch == col % patch)
    return received * same_position


def _hook_mobilevitv2(block: MobileViTv2Block, emit: Emit, query: Query) -> list:
    """The context scores of each separable self-attention layer of a MobileViTv2 block,
    read from its qkv projection (channel 0 = x W_I); the block's pre-hook gives the map size."""
    grid: dict[str, int] = {}

    def on_input(module, inputs):
        patch = module.patch_size
        grid["height"], grid["width"] = (-(-side // patch) * patch for side in inputs[0].shape[2:])

    def scores_saver(index: int):
        def save(_module, _inputs, output):
            scores = output[:, :1].detach().softmax(dim=-1)
            emit(_separable_map(scores, block.patch_size, grid["height"], grid["width"], query),
                 f".transformer.{index}.attn")
        return save

    handles = [block.register_forward_pre_hook(on_input)]
    handles += [layer.attn.qkv.register_forward_hook(scores_saver(i)) for i, layer in enumerate(block.transformer)]
    return handles


register_attention_reader(MobileViTv2Block, _hook_mobilevitv2)


# -- timm's checkpoint layout -------------------------------------------------------------
_TIMM_KEY_RULES = [
    # (timm pattern, own replacement), all applied in order
    (r"\.conv1_1x1\.", ".expand."),
    (r"\.conv2_kxk\.", ".depthwise."),
    (r"\.conv3_1x1\.", ".project."),
    (r"\.conv_kxk\.", ".local_dw."),
    (r"\.conv_1x1\.", ".local_proj."),
    (r"\.conv_proj\.", ".out_proj."),
    (r"\.attn\.qkv_proj\.", ".attn.qkv."),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"^head\.fc\.", "head."),
]


def is_timm_layout(state_dict: dict) -> bool:
    """Whether ``state_dict`` uses timm's names (its ``conv1_1x1`` / ``conv_kxk`` keys)."""
    return any(".conv1_1x1." in k or ".conv_kxk." in k for k in state_dict)


def convert_timm(state_dict: dict) -> dict:
    """Rename a timm ``mobilevitv2_*`` state dict to this module's layout; tensors are untouched."""
    return rename_keys(state_dict, _TIMM_KEY_RULES)


register_layout(MobileViTv2, "timm", is_timm_layout, convert_timm)


# -- the official release's checkpoint layout (apple/ml-cvnets) ---------------------------
_OFFICIAL_KEY_RULES = [
    # (ml-cvnets pattern, own replacement), all applied in order
    (r"^conv_1\.", "stem."),
    (r"^layer_(\d)\.", lambda m: f"stages.{int(m[1]) - 1}."),
    (r"\.block\.exp_1x1\.", ".expand."),
    (r"\.block\.conv_3x3\.", ".depthwise."),
    (r"\.block\.red_1x1\.", ".project."),
    (r"\.local_rep\.0\.", ".local_dw."),
    (r"\.local_rep\.1\.block\.conv\.", ".local_proj."),
    (r"\.global_rep\.(\d+)\.pre_norm_attn\.0\.", r".transformer.\1.norm1."),
    (r"\.global_rep\.(\d+)\.pre_norm_attn\.1\.qkv_proj\.block\.conv\.", r".transformer.\1.attn.qkv."),
    (r"\.global_rep\.(\d+)\.pre_norm_attn\.1\.out_proj\.block\.conv\.", r".transformer.\1.attn.proj."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.0\.", r".transformer.\1.norm2."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.block\.conv\.", r".transformer.\1.mlp.fc1."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.3\.block\.conv\.", r".transformer.\1.mlp.fc2."),
    (r"\.global_rep\.\d+\.(weight|bias)$", r".norm.\1"),  # the norm after the last layer
    (r"\.conv_proj\.", ".out_proj."),
    (r"(^stem|\.[a-z_]+)\.block\.conv\.", r"\1.conv."),
    (r"(^stem|\.[a-z_]+)\.block\.norm\.", r"\1.bn."),
    (r"^classifier\.1\.", "head."),
]
_OFFICIAL_MARKER = re.compile(r"^(conv_1\.block\.|layer_\d\.\d+\.)")


def is_official_layout(state_dict: dict) -> bool:
    """Whether ``state_dict`` uses ml-cvnets' names (``conv_1`` / ``layer_1`` ... ``layer_5``)."""
    return any(_OFFICIAL_MARKER.match(k) for k in state_dict)


def convert_official(state_dict: dict) -> dict:
    """Rename an official MobileViTv2 state dict (apple/ml-cvnets: ``conv_1``, ``layer_i.j``,
    ``local_rep`` / ``global_rep`` / ``conv_proj``, ``classifier.1``) to this module's layout;
    tensors are untouched."""
    return rename_keys(state_dict, _OFFICIAL_KEY_RULES)


register_layout(MobileViTv2, "official MobileViTv2 release (apple/ml-cvnets)", is_official_layout,
                convert_official)


# -- variants -----------------------------------------------------------------------------
VARIANTS = {  # name: (width multiplier, the paper's ImageNet-1K top-1)
    "mobilevitv2_050": (0.5, 70.18),
    "mobilevitv2_075": (0.75, 75.56),
    "mobilevitv2_100": (1.0, 78.09),
    "mobilevitv2_125": (1.25, 79.65),
    "mobilevitv2_150": (1.5, 80.38),
    "mobilevitv2_175": (1.75, 80.84),
    "mobilevitv2_200": (2.0, 81.17),
}

for _name, (_multiplier, _top1) in VARIANTS.items():
    register_variant(
        ModelInfo(
            name=_name,
            family="mobilevitv2",
            model_cls=MobileViTv2,
            cfg=MobileViTv2Cfg(width_multiplier=_multiplier),
            timm_name=f"em_{_name}",
            first_conv="stem.conv",
            classifier="head",
            pool_size=(8, 8),
            paper_name="Separable Self-attention for Mobile Vision Transformers",
            paper_ids="arXiv:2206.02680",
            license="cvnets-license",  # Apple's CVNets sample-code license, as timm records it
            input_size=(3, 256, 256),
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            crop_pct=0.888,
            feature_out_indices=(0, 1, 2, 3, 4),
            top1=_top1,
            top1_source=PAPER + " (256², trained on ImageNet-1K only)",
            # the authors' (CVNets) ImageNet-1K weights as timm publishes them (converted on loading)
            weights=ReleasedWeights(tag="cvnets_in1k", hf_hub_id=f"timm/{_name}.cvnets_in1k",
                                    origin_url="https://github.com/apple/ml-cvnets"),
        )
    )
