"""EfficientViT (MSRA) — "EfficientViT: Memory Efficient Vision Transformer with Cascaded
Group Attention" (Liu et al., CVPR 2023, arXiv 2305.07027).

The paper's building block is a *sandwich*: one memory-bound attention layer between
cheap, BatchNorm-only feed-forward layers (its Eq. 1)::

    X_{i+1} = Π^N Φ^F( Φ^A( Π^N Φ^F(X_i) ) )        here N = 1

where each FFN Φ^F is preceded by a depth-wise 3×3 conv "token interaction" layer, both
residual.  The attention Φ^A is *cascaded group attention* (Eq. 2–3) inside local windows:
head j sees only the j-th channel split X_j of its input, plus the previous head's output::

    X'_j   = X_j + X̃_{j-1}                      (cascade; X'_1 = X_1)
    Q, K, V = split( W_j X'_j ),  Q ← DWConv_k(Q)   (per-head projection, query DW conv)
    X̃_j    = softmax( QᵀK / √d_k + B_j ) V        (B_j: per-head relative-position biases)
    X̃      = W_P · ReLU( concat_j X̃_j )

Q and K are narrow (d_k = 16), V as wide as the head's split (parameter reallocation).
The network: a 16× overlapping patch embedding (four 3×3 stride-2 convs), three stages at
strides 16, 32, 64, joined by subsampling blocks (DW conv + FFN, an inverted-residual
"patch merging" with squeeze-excitation, DW conv + FFN), and a BatchNorm + linear head.
Every conv is a fusable :class:`ConvNorm`, the head a fusable :class:`LinearNorm`.

The module layout holds timm's ``efficientvit_m*`` weights; :func:`convert_timm` renames them,
:func:`convert_official` the official release's (microsoft/Cream).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SqueezeExcite

from efficientmod.checkpoint import register_layout, rename_keys
from efficientmod.fuse import register_fuser
from efficientmod.models.base import Backbone
from efficientmod.models.info import ModelInfo, ReleasedWeights
from efficientmod.models.layers import ConvNorm, LinearNorm, Stage, drop_path_or_identity
from efficientmod.models.registry import register_variant
from efficientmod.viz import Emit, Query, attention_map, register_attention_reader

__all__ = [
    "EfficientViTCfg", "EfficientViT", "CascadedGroupAttention", "SandwichBlock", "FusedCascadedGroupAttention",
    "FusedInteractionFFN", "convert_timm", "convert_official",
]

PAPER = ("Liu et al., EfficientViT: Memory Efficient Vision Transformer with Cascaded Group "
         "Attention, CVPR 2023 (arXiv 2305.07027), ImageNet-1K table")
PATCH_SIZE = 16


@dataclass(frozen=True, kw_only=True)
class EfficientViTCfg:
    """Architecture of one variant: per stage the width, the number of sandwich blocks and
    of attention heads; ``query_kernels[j]`` is the DW-conv kernel on head j's queries."""

    dims: tuple[int, int, int]
    depths: tuple[int, int, int]
    heads: tuple[int, int, int]
    query_kernels: tuple[int, int, int, int]
    key_dim: int = 16
    window_size: int = 7
    ffn_ratio: int = 2
    merge_ratio: int = 4


class FeedForward(nn.Sequential):
    """Φ^F: 1×1 ConvNorm (C → rC), ReLU, 1×1 ConvNorm (rC → C, BN scale initialised to 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.expand = ConvNorm(dim, hidden)
        self.act = nn.ReLU()
        self.project = ConvNorm(hidden, dim, bn_weight_init=0.0)


class InteractionFFN(nn.Module):
    """x ← x + DWConv3×3(x);  x ← x + Φ^F(x)  — token interaction, then channel mixing."""

    def __init__(self, dim: int, ffn_ratio: int, drop_path: float = 0.0, dw_bn_weight_init: float = 0.0):
        super().__init__()
        self.dw = ConvNorm(dim, dim, 3, groups=dim, bn_weight_init=dw_bn_weight_init)
        self.ffn = FeedForward(dim, dim * ffn_ratio)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.dw(x))
        return x + self.drop_path(self.ffn(x))


def pad_to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right to whole ``window``×``window`` windows."""
    pad_bottom, pad_right = (-x.shape[2]) % window, (-x.shape[3]) % window
    if pad_bottom or pad_right:
        x = F.pad(x, (0, pad_right, 0, pad_bottom))
    return x


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W), sides multiples of ``window`` → (B·rows·cols, C, window, window)."""
    batch, channels = x.shape[0], x.shape[1]
    rows, cols = x.shape[2] // window, x.shape[3] // window
    x = x.reshape(batch, channels, rows, window, cols, window).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch * rows * cols, channels, window, window)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`window_partition` after :func:`pad_to_windows`: back to
    (B, C, ``height``, ``width``), the padding cropped."""
    rows, cols = (height + window - 1) // window, (width + window - 1) // window
    batch, channels = windows.shape[0] // (rows * cols), windows.shape[1]
    x = windows.reshape(batch, rows, cols, channels, window, window).permute(0, 3, 1, 4, 2, 5)
    x = x.reshape(batch, channels, rows * window, cols * window)
    if rows * window != height or cols * window != width:
        x = x[:, :, :height, :width]
    return x


# Shape-dependent branches: torch.fx keeps these as calls (leaves) instead of tracing into them.
torch.fx.wrap("pad_to_windows")
torch.fx.wrap("window_merge")


def relative_offset_index(window: int) -> torch.Tensor:
    """(window², window²) index into a per-head bias table of window² entries: tokens p, q
    of a window share bias number |p_y − q_y|·window + |p_x − q_x|."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).abs()
    return offsets[0] * window + offsets[1]


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention (the module docstring's equations) on non-overlapping
    ``window``×``window`` windows; maps are zero-padded at the bottom/right to whole windows
    and cropped back, as the reference does."""

    def __init__(self, dim: int, key_dim: int, heads: int, window: int, query_kernels: tuple[int, ...]):
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.head_dim = dim // heads  # each head's input split, and its value width
        self.window = window
        self.qkv = nn.ModuleList(
            ConvNorm(self.head_dim, 2 * key_dim + self.head_dim) for _ in range(heads))
        self.query_dw = nn.ModuleList(
            ConvNorm(key_dim, key_dim, query_kernels[j], groups=key_dim) for j in range(heads))
        self.act = nn.ReLU()
        self.proj = ConvNorm(self.head_dim * heads, dim, bn_weight_init=0.0)
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))
        self.register_buffer("bias_index", relative_offset_index(window), persistent=False)

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Recompute ``bias_index`` in place: what timm's and transformers' loaders call after
        building a model on the meta device (a non-persistent buffer is in no checkpoint)."""
        self.bias_index.copy_(relative_offset_index(self.window))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The cascade on windows (B', C, w, w)."""
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
        biases = self.attention_biases[:, self.bias_index]  # (heads, w², w²)
        splits = x.chunk(self.heads, dim=1)
        outputs: list[torch.Tensor] = []
        for j, (qkv, query_dw) in enumerate(zip(self.qkv, self.query_dw)):  # noqa: B905 (TorchScript: no strict=)
            feature = splits[j] if j == 0 else splits[j] + outputs[j - 1]
            q, k, v = qkv(feature).split([self.key_dim, self.key_dim, self.head_dim], dim=1)
            # (B', 1 head, tokens, channels): the 4-D form every exporter takes (dynamo's ONNX needs it)
            q = query_dw(q).flatten(2).transpose(1, 2).unsqueeze(1)
            k, v = k.flatten(2).transpose(1, 2).unsqueeze(1), v.flatten(2).transpose(1, 2).unsqueeze(1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=biases[j].to(q.dtype)).squeeze(1)
            outputs.append(out.transpose(1, 2).reshape(batch, self.head_dim, height, width))
        return self.proj(self.act(torch.cat(outputs, dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        windows = self.attend(window_partition(pad_to_windows(x, self.window), self.window))
        return window_merge(windows, self.window, height, width)


class SandwichBlock(nn.Module):
    """X ← Π Φ^F( X + Φ^A(Π Φ^F X) ) with residual FFNs and a residual attention."""

    def __init__(self, dim: int, cfg: EfficientViTCfg, heads: int, window: int, drop_path: float = 0.0):
        super().__init__()
        self.pre = InteractionFFN(dim, cfg.ffn_ratio, drop_path)
        self.attn = CascadedGroupAttention(dim, cfg.key_dim, heads, window, cfg.query_kernels)
        self.post = InteractionFFN(dim, cfg.ffn_ratio, drop_path)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        x = x + self.drop_path(self.attn(x))
        return self.post(x)


class PatchMerging(nn.Sequential):
    """Inverted residual that halves the resolution: 1×1 (C → 4C), ReLU, DW 3×3 stride 2,
    ReLU, squeeze-excitation, 1×1 (4C → C_out)."""

    def __init__(self, in_dim: int, out_dim: int, ratio: int):
        super().__init__()
        hidden = in_dim * ratio
        self.expand = ConvNorm(in_dim, hidden)
        self.act1 = nn.ReLU()
        self.dw = ConvNorm(hidden, hidden, 3, stride=2, groups=hidden)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcite(hidden, rd_ratio=0.25)
        self.project = ConvNorm(hidden, out_dim)


class Subsample(nn.Sequential):
    """The paper's subsampling block: DW conv + FFN, patch merging, DW conv + FFN."""

    def __init__(self, in_dim: int, out_dim: int, cfg: EfficientViTCfg):
        super().__init__()
        self.pre = InteractionFFN(in_dim, cfg.ffn_ratio, dw_bn_weight_init=1.0)
        self.merge = PatchMerging(in_dim, out_dim, cfg.merge_ratio)
        self.post = InteractionFFN(out_dim, cfg.ffn_ratio, dw_bn_weight_init=1.0)


def patch_embedding(in_chans: int, dim: int) -> nn.Sequential:
    """Four 3×3 stride-2 ConvNorms (in → C/8 → C/4 → C/2 → C) with ReLUs between: 16×16 patches."""
    widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
    layers = OrderedDict()
    for i in range(4):
        layers[f"conv{i + 1}"] = ConvNorm(widths[i], widths[i + 1], 3, stride=2)
        if i < 3:
            layers[f"act{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)


class EfficientViT(Backbone):
    """The EfficientViT-MSRA network (NCHW throughout).

    ``img_size`` fixes the attention windows as the reference does: a stage whose map (at
    that size) is smaller than ``cfg.window_size`` attends over one window of the map's
    size (M*: 7, 7, 4 at 224²); other input sizes are padded to whole windows.
    """

    input_multiple = PATCH_SIZE

    def __init__(
        self,
        cfg: EfficientViTCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        img_size: int = 224,
        global_pool: str = "avg",
    ):
        super().__init__(cfg, num_classes, in_chans, num_features=cfg.dims[-1], global_pool=global_pool)
        self.drop_rate = drop_rate

        self.stem = patch_embedding(in_chans, cfg.dims[0])
        drop_paths = iter(torch.linspace(0, drop_path_rate, sum(cfg.depths), device="cpu").tolist())
        resolution = img_size // PATCH_SIZE
        stages, self.feature_info = [], []
        for i, (dim, depth, heads) in enumerate(zip(cfg.dims, cfg.depths, cfg.heads, strict=True)):
            if i:
                resolution = (resolution - 1) // 2 + 1  # a stride-2, padding-1 conv
            window = min(cfg.window_size, resolution)
            downsample = Subsample(cfg.dims[i - 1], dim, cfg) if i else nn.Identity()
            blocks = [SandwichBlock(dim, cfg, heads, window, next(drop_paths)) for _ in range(depth)]
            stages.append(Stage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=PATCH_SIZE * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self._attach_head(nn.Identity(), self._make_head(num_classes))  # its dropout sits inside, after the BN

    def _make_head(self, num_classes: int) -> nn.Module:
        """BatchNorm1d → dropout → linear on the pooled features (truncated-normal init)."""
        return LinearNorm(self.num_features, num_classes, drop=self.drop_rate) if num_classes > 0 else nn.Identity()

    # -- timm interface -------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.downsample", (0,)),
                                                      (r"^stages\.(\d+)\.blocks\.(\d+)", None)],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith("attention_biases")}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.linear if isinstance(self.head, LinearNorm) else self.head


# -- deployment: the fused inference forms (efficientmod.deploy) -------------------------
class FusedCascadedGroupAttention(nn.Module):
    """:class:`CascadedGroupAttention` for inference: BatchNorms folded, the 1/√d_k
    folded into the query DW conv (Q ← DWConv(Q)/√d_k is still one conv), and the
    relative-position biases B_j gathered once into a buffer instead of indexed from the
    table at every call.

    The windows hold 49 tokens of 16 channels, far below what fused attention kernels
    pay off for, so QᵀK + B_j → softmax → V·Aᵀ is written out (also what ONNX gets),
    in the layout that needs no transposes of Q, K or V.
    """

    def __init__(self, attn: CascadedGroupAttention):
        super().__init__()
        self.heads, self.key_dim, self.head_dim, self.window = attn.heads, attn.key_dim, attn.head_dim, attn.window
        self.qkv = nn.ModuleList(conv.fuse() for conv in attn.qkv)
        self.query_dw = nn.ModuleList(conv.fuse() for conv in attn.query_dw)
        with torch.no_grad():
            for conv in self.query_dw:
                conv.weight.mul_(self.key_dim ** -0.5)
                conv.bias.mul_(self.key_dim ** -0.5)
        self.act, self.proj = attn.act, attn.proj.fuse()
        self.register_buffer("attention_bias", attn.attention_biases[:, attn.bias_index].detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Window partition with constant shapes (batch -1), skipped when the map is one
        window (the last two stages at 224²)."""
        channels, height, width = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        w = self.window
        if height == width == w:
            return self.attend(x)
        pad_bottom, pad_right = (-height) % w, (-width) % w
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom))
        rows, cols = (height + pad_bottom) // w, (width + pad_right) // w
        windows = x.reshape(-1, channels, rows, w, cols, w).permute(0, 2, 4, 1, 3, 5)
        windows = self.attend(windows.reshape(-1, channels, w, w))
        x = windows.reshape(-1, rows, cols, channels, w, w).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(-1, channels, rows * w, cols * w)
        return x[:, :, :height, :width] if pad_bottom or pad_right else x

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The cascade on windows (B', C, w, w)."""
        height, width = int(x.shape[2]), int(x.shape[3])
        tokens = height * width
        key_dim, head_dim = self.key_dim, self.head_dim
        splits = x.split(head_dim, dim=1)  # constant sizes, unlike chunk's in ONNX
        outputs: list[torch.Tensor] = []
        for j, (qkv, query_dw) in enumerate(zip(self.qkv, self.query_dw)):  # noqa: B905 (TorchScript: no strict=)
            feature = splits[j] if j == 0 else splits[j] + outputs[j - 1]
            q, k, v = qkv(feature).split([key_dim, key_dim, head_dim], dim=1)
            q = query_dw(q).reshape(-1, key_dim, tokens)
            k, v = k.reshape(-1, key_dim, tokens), v.reshape(-1, head_dim, tokens)
            attention = (q.transpose(1, 2) @ k + self.attention_bias[j]).softmax(dim=-1)
            outputs.append((v @ attention.transpose(1, 2)).reshape(-1, head_dim, height, width))
        return self.proj(self.act(torch.cat(outputs, dim=1)))


class FusedInteractionFFN(nn.Module):
    """:class:`InteractionFFN` for inference: the residual of the token-interaction layer
    folded into its kernel — x + DWConv(x) is one depth-wise conv whose centre tap is one
    larger (exact for a 'same'-padded odd kernel)."""

    def __init__(self, layer: InteractionFFN):
        super().__init__()
        self.dw = layer.dw.fuse()
        center = tuple(k // 2 for k in self.dw.kernel_size)
        with torch.no_grad():
            self.dw.weight[(slice(None), 0, *center)] += 1
        self.ffn = layer.ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(x)
        return x + self.ffn(x)


register_fuser(CascadedGroupAttention, FusedCascadedGroupAttention)
register_fuser(InteractionFFN, FusedInteractionFFN)


# -- visualisation: attention maps (efficientmod.viz) -----------------------------------
def _windows_to_dense(windows: torch.Tensor, batch: int, height: int, width: int, window: int) -> torch.Tensor:
    """(B·rows·cols, heads, w², w²) per-window attention → (B, heads, N, N) over the h×w
    tokens (zero between windows; the padding tokens of partial windows dropped)."""
    rows, cols = -(-height // window), -(-width // window)
    heads, area = windows.shape[1], window * window
    padded = rows * window * cols * window
    token_ids = torch.arange(padded).reshape(rows, window, cols, window).permute(0, 2, 1, 3).reshape(-1, area)
    dense = windows.new_zeros(batch, heads, padded, padded)
    windows = windows.reshape(batch, rows * cols, heads, area, area)
    for n, ids in enumerate(token_ids):
        dense[:, :, ids[:, None], ids[None, :]] = windows[:, n]
    inside = ((torch.arange(rows * window) < height)[:, None]
              & (torch.arange(cols * window) < width)[None, :]).flatten()
    return dense[:, :, inside][:, :, :, inside]


def _hook_cascaded_group_attention(attention: CascadedGroupAttention, emit: Emit, query: Query) -> list:
    """EfficientViT's cascaded group attention: head j's softmax(QᵀK/√d_k + B_j) in each
    window, from the queries (after the query DW conv) and keys its own layers produced
    during the forward pass (head j's input depends on head j − 1, so they are read, not
    recomputed)."""
    queries: dict[int, torch.Tensor] = {}
    keys: dict[int, torch.Tensor] = {}
    key_dim = attention.key_dim

    def saver(store: dict, head: int, channels: slice):
        def save(_module, _inputs, output):
            store[head] = output[:, channels].detach().flatten(2)  # (B', d_k, w²)
        return save

    handles = [layer.register_forward_hook(saver(keys, j, slice(key_dim, 2 * key_dim)))
               for j, layer in enumerate(attention.qkv)]
    handles += [layer.register_forward_hook(saver(queries, j, slice(None)))
                for j, layer in enumerate(attention.query_dw)]

    def assemble(module, inputs, _output):
        batch, _, height, width = inputs[0].shape
        with torch.no_grad():
            biases = module.attention_biases[:, module.bias_index]
            logits = [queries[j].transpose(1, 2) @ keys[j] * key_dim**-0.5 + biases[j] for j in range(module.heads)]
            windows = torch.stack(logits, dim=1).softmax(dim=-1)
            emit(attention_map(_windows_to_dense(windows, batch, height, width, module.window), (height, width), query))

    handles.append(attention.register_forward_hook(assemble))
    return handles


register_attention_reader(CascadedGroupAttention, _hook_cascaded_group_attention)


# -- timm's checkpoint layout -------------------------------------------------------------
# the names inside a sandwich block, the same in timm's and the official layout
_BLOCK_KEY_RULES = [
    (r"\.dw0\.m\.", ".pre.dw."),
    (r"\.ffn0\.m\.", ".pre.ffn."),
    (r"\.dw1\.m\.", ".post.dw."),
    (r"\.ffn1\.m\.", ".post.ffn."),
    (r"\.mixer\.m\.attn\.qkvs\.", ".attn.qkv."),
    (r"\.mixer\.m\.attn\.dws\.", ".attn.query_dw."),
    (r"\.mixer\.m\.attn\.proj\.1\.", ".attn.proj."),
    (r"\.mixer\.m\.attn\.attention_biases$", ".attn.attention_biases"),
    (r"\.pw1\.", ".expand."),
    (r"\.pw2\.", ".project."),
]


_TIMM_KEY_RULES = [
    # (timm pattern, own replacement), all applied in order
    (r"^patch_embed\.", "stem."),
    (r"\.downsample\.res1\.0\.m\.", ".downsample.pre.dw."),
    (r"\.downsample\.res1\.1\.m\.", ".downsample.pre.ffn."),
    (r"\.downsample\.res2\.0\.m\.", ".downsample.post.dw."),
    (r"\.downsample\.res2\.1\.m\.", ".downsample.post.ffn."),
    (r"\.downsample\.patchmerge\.conv1\.", ".downsample.merge.expand."),
    (r"\.downsample\.patchmerge\.conv2\.", ".downsample.merge.dw."),
    (r"\.downsample\.patchmerge\.conv3\.", ".downsample.merge.project."),
    (r"\.downsample\.patchmerge\.se\.", ".downsample.merge.se."),
    *_BLOCK_KEY_RULES,
]


_TIMM_MARKER = re.compile(r"^stages\.\d+\.blocks\.\d+\.mixer\.m\.attn\.")


def is_timm_layout(state_dict: dict) -> bool:
    """Whether ``state_dict`` uses timm's names (``stages.i.blocks.j.mixer.m.attn`` keys;
    the official release's ``blocks1.j.mixer.m.attn`` keys do not match)."""
    return any(_TIMM_MARKER.match(k) for k in state_dict)


def convert_timm(state_dict: dict) -> dict:
    """Rename a timm ``efficientvit_m*`` state dict to this module's layout; tensors are
    untouched. ``attention_bias_idxs`` (saved by older timm versions) is dropped: this module
    recomputes its ``bias_index`` (a non-persistent buffer) from the window size."""
    kept = {k: v for k, v in state_dict.items() if not k.endswith("attention_bias_idxs")}
    return rename_keys(kept, _TIMM_KEY_RULES)


register_layout(EfficientViT, "timm", is_timm_layout, convert_timm)


# -- the official release's checkpoint layout (microsoft/Cream) ---------------------------
# Stage i + 1 of the release is ``blocks{i+1}``: for i > 0 its entries 0-2 are the
# subsampling block (DW conv + FFN, patch merging, DW conv + FFN), the sandwich blocks follow.
_SUBSAMPLE_PARTS = {"0.0": "pre.dw", "0.1": "pre.ffn", "2.0": "post.dw", "2.1": "post.ffn"}  # entry 1: merge
_OFFICIAL_KEY_RULES = [
    (r"^patch_embed\.(\d)\.", lambda m: f"stem.conv{int(m[1]) // 2 + 1}."),
    (r"\.c\.weight$", ".conv.weight"),
    (r"^head\.l\.", "head.linear."),
    (r"\.merge\.conv1\.", ".merge.expand."),
    (r"\.merge\.conv2\.", ".merge.dw."),
    (r"\.merge\.conv3\.", ".merge.project."),
    (r"\.downsample\.(pre|post)\.(dw|ffn)\.m\.", r".downsample.\1.\2."),
    *_BLOCK_KEY_RULES,
]
_OFFICIAL_STAGE_ENTRY = re.compile(r"^blocks(\d+)\.(\d+)\.(?:(\d+)\.)?")
_OFFICIAL_MARKER = re.compile(r"^(blocks\d+\.\d+\.|patch_embed\.\d+\.c\.)")


def is_official_layout(state_dict: dict) -> bool:
    """Whether ``state_dict`` uses the official release's names (``blocks1`` ... ``blocks3``,
    ``patch_embed.0.c``)."""
    return any(_OFFICIAL_MARKER.match(k) for k in state_dict)


def _official_stage_key(key: str) -> str:
    """``blocks{s}.{j}[.{p}].rest`` → ``stages.{s-1}.(blocks.{j'}|downsample.{part}).rest``."""
    match = _OFFICIAL_STAGE_ENTRY.match(key)
    if match is None:
        return key
    stage, entry, part = int(match[1]) - 1, int(match[2]), match[3]
    rest = key[match.end():]
    whole = f"{part}.{rest}" if part is not None else rest  # no sub-index: the entry's own names
    if stage == 0 or entry >= 3:
        return f"stages.{stage}.blocks.{entry - (3 if stage else 0)}.{whole}"
    if entry == 1:  # patch merging: conv1 / conv2 / se / conv3
        return f"stages.{stage}.downsample.merge.{whole}"
    return f"stages.{stage}.downsample.{_SUBSAMPLE_PARTS[f'{entry}.{part}']}.{rest}"


def convert_official(state_dict: dict) -> dict:
    """Rename an official EfficientViT state dict (microsoft/Cream: ``patch_embed.k``,
    ``blocks1``-``blocks3``, ``head.l``; released as ``{'model': state_dict}``) to this
    module's layout; tensors untouched, ``attention_bias_idxs`` dropped (recomputed)."""
    kept = {_official_stage_key(k): v for k, v in state_dict.items() if not k.endswith("attention_bias_idxs")}
    return rename_keys(kept, _OFFICIAL_KEY_RULES)


register_layout(EfficientViT, "official EfficientViT release (microsoft/Cream)", is_official_layout,
                convert_official)


# -- variants -----------------------------------------------------------------------------
VARIANTS = {  # the paper's Table of model variants
    "efficientvit_m0": EfficientViTCfg(dims=(64, 128, 192), depths=(1, 2, 3), heads=(4, 4, 4),
                                       query_kernels=(5, 5, 5, 5)),
    "efficientvit_m1": EfficientViTCfg(dims=(128, 144, 192), depths=(1, 2, 3), heads=(2, 3, 3),
                                       query_kernels=(7, 5, 3, 3)),
    "efficientvit_m2": EfficientViTCfg(dims=(128, 192, 224), depths=(1, 2, 3), heads=(4, 3, 2),
                                       query_kernels=(7, 5, 3, 3)),
    "efficientvit_m3": EfficientViTCfg(dims=(128, 240, 320), depths=(1, 2, 3), heads=(4, 3, 4),
                                       query_kernels=(5, 5, 5, 5)),
    "efficientvit_m4": EfficientViTCfg(dims=(128, 256, 384), depths=(1, 2, 3), heads=(4, 4, 4),
                                       query_kernels=(7, 5, 3, 3)),
    "efficientvit_m5": EfficientViTCfg(dims=(192, 288, 384), depths=(1, 3, 4), heads=(3, 3, 4),
                                       query_kernels=(7, 5, 3, 3)),
}
PAPER_TOP1 = dict(efficientvit_m0=63.2, efficientvit_m1=68.4, efficientvit_m2=70.8, efficientvit_m3=73.4,
                  efficientvit_m4=74.3, efficientvit_m5=77.1)

for _name, _cfg in VARIANTS.items():
    register_variant(
        ModelInfo(
            name=_name,
            family="efficientvit",
            model_cls=EfficientViT,
            cfg=_cfg,
            timm_name=f"em_{_name}",
            first_conv="stem.conv1.conv",
            classifier="head.linear",
            pool_size=(4, 4),  # stride 64: ceil(224 / 64)
            paper_name="EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention",
            paper_ids="arXiv:2305.07027",
            license="mit",
            crop_pct=0.875,
            feature_out_indices=(0, 1, 2),
            top1=PAPER_TOP1[_name],
            top1_source=PAPER,
            # the authors' ImageNet-1K weights as timm publishes them (converted on loading)
            weights=ReleasedWeights(tag="r224_in1k", hf_hub_id=f"timm/{_name}.r224_in1k",
                                    origin_url="https://github.com/microsoft/Cream/tree/main/EfficientViT"),
        )
    )
