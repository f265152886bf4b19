"""Measuring models: parameters, MACs, latency and throughput on every backend."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by
    ``torch.utils.flop_counter`` (matmuls, convolutions and attention; FLOPs / 2)."""
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
