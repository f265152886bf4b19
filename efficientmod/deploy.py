"""Inference-time rewrites: the same function, fewer and larger operations.

:func:`deploy` walks a model once and replaces every block that has a cheaper
inference form:

* any module with a ``fuse()`` method (``ConvNorm``, ``LinearNorm`` and whatever a model
  family defines) is replaced by what ``fuse()`` returns — BatchNorm folded into the
  conv / linear before or after it;
* the blocks registered here with :func:`register_fuser` are replaced by their fused
  form, one section per family below — EfficientMod: layer scales folded into the
  projection they scale, f and v (both reading LN x) merged into one matrix multiply,
  the attention scale folded into the query weights; EfficientViT: relative-position
  biases gathered once, the token-interaction residual folded into its DW kernel;
  MobileViTv2: GroupNorm affines folded into the next 1×1 conv, keys pooled before
  their projection.

EfficientMod's and EfficientViT's fused blocks also write their reshapes with constant
sizes (batch −1), so their ONNX exports have no shape-computing nodes (MobileViTv2's
patch unfold / fold still computes its shapes). The rewrites are exact up to float rounding (outputs agree
to ~1e-6 in float32; the tests hold every variant to 1e-4). Deployed modules keep plain
``nn.Linear`` / ``nn.Conv2d`` parameters, so ``.to(device / dtype)``, ``torch.compile``
and ONNX export work as before; they are for inference only (no BatchNorm statistics,
no drop path).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from efficientmod.models.efficientmod import AttentionBlock, ModulationBlock
from efficientmod.models.efficientvit import CascadedGroupAttention, InteractionFFN
from efficientmod.models.mobilevitv2 import LinearTransformerLayer, MobileViTv2Block, SeparableSelfAttention

__all__ = [
    "deploy", "is_deployed", "register_fuser", "FusedModulationBlock", "FusedAttentionBlock",
    "FusedCascadedGroupAttention", "FusedInteractionFFN", "FusedLinearTransformerLayer", "FusedMobileViTv2Block",
]

_FUSERS: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {}


def register_fuser(block_type: type[nn.Module]):
    """Decorator: ``fn(block) -> module`` is the inference form of ``block_type``
    (for blocks whose class does not define ``fuse()`` itself)."""

    def wrap(fn):
        _FUSERS[block_type] = fn
        return fn

    return wrap


def _fuser_of(module: nn.Module) -> Callable[[], nn.Module] | None:
    if type(module) in _FUSERS:
        return lambda: _FUSERS[type(module)](module)
    fuse = getattr(module, "fuse", None)
    return fuse if callable(fuse) else None


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        fuser = _fuser_of(child)
        if fuser is not None:
            child = fuser()
            setattr(module, name, child)
        _fuse_children(child)  # a fused block may still hold fusable parts


@torch.no_grad()
def deploy(model: nn.Module, channels_last: bool | None = None) -> nn.Module:
    """Rewrite ``model`` in place for inference (and return it); idempotent.

    The model is put in eval mode (BatchNorm statistics are folded, dropout and drop path
    become identities). ``channels_last`` stores 4-D conv weights in channels-last memory
    format (what cuDNN's fastest kernels want; feed channels-last inputs too); by default
    it is on when the model lives on a GPU and off on CPU.
    """
    model.eval()
    if not is_deployed(model):
        _fuse_children(model)
        model.deployed = True
    first = next(model.parameters(), None)
    if channels_last is None:
        channels_last = first is not None and first.is_cuda
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def is_deployed(model: nn.Module) -> bool:
    return bool(getattr(model, "deployed", False))


@torch.no_grad()
def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    return linear


@torch.no_grad()
def _conv1x1_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def _scaled_linear(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """``scale ⊙ linear(x)`` as one linear layer: rows of W and b times ``scale``."""
    bias = linear.bias * scale if linear.bias is not None else None
    return _linear_from(linear.weight * scale[:, None], bias)


@torch.no_grad()
def _stacked_linear(*linears: nn.Linear) -> nn.Linear:
    """One linear layer computing ``cat([l(x) for l in linears], -1)``."""
    weight = torch.cat([l.weight for l in linears])
    biases = [l.bias if l.bias is not None else l.weight.new_zeros(l.out_features) for l in linears]
    return _linear_from(weight, torch.cat(biases))


def _stacked_outputs(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor,
                     sizes: list[int]) -> list[torch.Tensor]:
    """``linear(x).split(sizes, -1)`` for a linear layer (``weight``, ``bias``) that stacks
    several projections.

    PyTorch runs one matrix multiply and returns views. An ONNX export gets one Gemm per
    part, on the matching rows of the weight (constant-folded): ONNX Runtime's Split copies
    its outputs, which costs a CPU more than the merged multiply saves (efficientmod_s:
    1.6 of 34 ms).
    """
    if not torch.jit.is_scripting():  # (TorchScript compiles only the split)
        if torch.onnx.is_in_onnx_export():
            parts, start = [], 0
            for size in sizes:
                rows = slice(start, start + size)
                parts.append(F.linear(x, weight[rows], None if bias is None else bias[rows]))
                start += size
            return parts
    return list(F.linear(x, weight, bias).split(sizes, dim=-1))


def _static_hwc(x: torch.Tensor) -> tuple[int, int, int]:
    """H, W and C of a (B, H, W, C) map as Python ints.

    Reshapes written with them (and -1 for the batch) export to ONNX as constant shapes
    instead of Shape → Gather → Concat chains: a dozen fewer nodes per block in ONNX
    Runtime, where each node costs a few microseconds at batch 1.
    """
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


# -- EfficientMod --------------------------------------------------------------------
class FusedModulationBlock(nn.Module):
    """:class:`~efficientmod.models.efficientmod.ModulationBlock` for inference.

    With y = LN(x), the block x + γ ⊙ p(repeat_r(g(GELU(DWConv(f y)))) ⊙ act(v y)) becomes

    * ``[f y, v y] = fv(y)``: f and v read the same y, so one (C → C + rC) matrix multiply
      (in PyTorch; ONNX gets one Gemm per part, see :func:`_stacked_outputs`);
    * ``p' = γ ⊙ p``: the layer scale folded into the rows of p;
    * the repeat as a broadcast: (N, r, C) ⊙ (N, 1, C), no r× copy of the context.

    Token-wise layers run on a 2-D (tokens × channels) matrix, which ONNX Runtime fuses
    with the bias into one Gemm.
    """

    def __init__(self, block: ModulationBlock):
        super().__init__()
        self.expansion_ratio = block.expansion_ratio
        self.norm = block.norm
        self.fv = _stacked_linear(block.ctx.f, block.v)
        self.dwconv, self.ctx_act, self.g = block.ctx.dwconv, block.ctx.act, block.ctx.g
        self.v_act = block.v_act
        self.proj = _scaled_linear(block.proj, block.layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        height, width, dim = _static_hwc(x)
        ratio = self.expansion_ratio
        f, v = _stacked_outputs(self.fv.weight, self.fv.bias, self.norm(x).reshape(-1, dim), [dim, ratio * dim])
        context = self.dwconv(f.reshape(-1, height, width, dim).permute(0, 3, 1, 2))
        context = self.g(self.ctx_act(context).permute(0, 2, 3, 1).reshape(-1, dim))
        v = self.v_act(v)
        if ratio == 1:
            modulated = context * v
        else:
            modulated = (context.unsqueeze(1) * v.reshape(-1, ratio, dim)).reshape(-1, ratio * dim)
        return x + self.proj(modulated).reshape(-1, height, width, dim)


class FusedAttentionBlock(nn.Module):
    """:class:`~efficientmod.models.efficientmod.AttentionBlock` for inference: the
    1/√d of softmax(QKᵀ/√d)V folded into the query rows of the qkv projection.

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
        self.qkv = _scaled_linear(attn.qkv, scale)
        self.proj = attn.proj

    def attention(self, tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Multi-head attention of (B·N, C) tokens, N per image."""
        heads, head_dim = self.heads, self.head_dim
        q, k, v = [t.reshape(-1, num_tokens, heads, head_dim).transpose(1, 2)
                   for t in _stacked_outputs(self.qkv.weight, self.qkv.bias, tokens, [heads * head_dim] * 3)]
        if not torch.jit.is_scripting():  # (TorchScript compiles only the fused kernel)
            if torch.onnx.is_in_onnx_export():
                x = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
                return self.proj(x.transpose(1, 2).reshape(-1, heads * head_dim))
        x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.proj(x.transpose(1, 2).reshape(-1, heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        height, width, dim = _static_hwc(x)
        tokens = x.reshape(-1, dim)
        tokens = tokens + self.attention(self.norm1(tokens), height * width)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.reshape(-1, height, width, dim)


register_fuser(ModulationBlock)(FusedModulationBlock)
register_fuser(AttentionBlock)(FusedAttentionBlock)


# -- EfficientViT ----------------------------------------------------------------------
class FusedCascadedGroupAttention(CascadedGroupAttention):
    """:class:`~efficientmod.models.efficientvit.CascadedGroupAttention` for inference:
    BatchNorms folded, the 1/√d_k folded into the query DW conv (Q ← DWConv(Q)/√d_k is
    still one conv), and the relative-position biases B_j gathered once into a buffer
    instead of indexed from the table at every call.

    The windows hold 49 tokens of 16 channels, far below what fused attention kernels
    pay off for, so QᵀK + B_j → softmax → V·Aᵀ is written out (also what ONNX gets),
    in the layout that needs no transposes of Q, K or V.
    """

    def __init__(self, attn: CascadedGroupAttention):
        nn.Module.__init__(self)
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


register_fuser(CascadedGroupAttention)(FusedCascadedGroupAttention)


class FusedInteractionFFN(nn.Module):
    """:class:`~efficientmod.models.efficientvit.InteractionFFN` for inference: the residual
    of the token-interaction layer folded into its kernel — x + DWConv(x) is one depth-wise
    conv whose centre tap is one larger (exact for a 'same'-padded odd kernel)."""

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


register_fuser(InteractionFFN)(FusedInteractionFFN)


# -- MobileViTv2 -----------------------------------------------------------------------
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
    return MapNorm(norm.eps), _conv1x1_from(conv.weight * norm.weight[None, :, None, None], bias)


class FusedSeparableSelfAttention(nn.Module):
    """:class:`~efficientmod.models.mobilevitv2.SeparableSelfAttention` for inference, on an
    input ``n`` already normalised (its norm's affine folded into the projections).

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
    return _conv1x1_from(torch.cat([conv.weight[r] for r in rows]), torch.cat([conv.bias[r] for r in rows]))


class FusedLinearTransformerLayer(LinearTransformerLayer):
    """:class:`~efficientmod.models.mobilevitv2.LinearTransformerLayer` for inference: both
    GroupNorms lose their affine (into the attention's projections and the FFN's first 1×1
    conv); the attention pools its keys (see :class:`FusedSeparableSelfAttention`)."""

    def __init__(self, layer: LinearTransformerLayer):
        nn.Module.__init__(self)
        self.norm1 = nn.Identity()  # inside the fused attention
        self.attn = FusedSeparableSelfAttention(layer.attn, layer.norm1)
        self.norm2, fc1 = _fold_norm_affine(layer.norm2, layer.mlp.fc1)
        self.mlp = layer.mlp
        self.mlp.fc1 = fc1
        self.drop_path = nn.Identity()


class FusedMobileViTv2Block(MobileViTv2Block):
    """:class:`~efficientmod.models.mobilevitv2.MobileViTv2Block` for inference: the last
    GroupNorm's affine folded into the output projection (the patch fold between them only
    moves pixels, so the per-channel affine commutes with it)."""

    def __init__(self, block: MobileViTv2Block):
        nn.Module.__init__(self)
        self.patch_size = block.patch_size
        self.local_dw, self.local_proj, self.transformer = block.local_dw, block.local_proj, block.transformer
        self.norm, self.out_proj = _fold_norm_affine(block.norm, block.out_proj.fuse())


register_fuser(LinearTransformerLayer)(FusedLinearTransformerLayer)
register_fuser(MobileViTv2Block)(FusedMobileViTv2Block)
