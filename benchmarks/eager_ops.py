"""What one eager forward pass asks of the device: the ATen operations it dispatches, counted.

At batch 1 on a fast GPU an eager forward is bound by the CPU launching kernels, so its
latency follows the number of operations (and the Python around them), not the FLOPs.
This counts, on the CPU, the operations of one forward pass as the GPU bench runs it
(model and input converted to ``--dtype``, channels-last, batch 1):

* the ATen operations the model's Python code calls, by name, split into those that launch
  work (compute, copies) and pure views (reshape / permute / split / transpose: metadata
  only, no kernel);
* the copies made inside convolutions (``aten::copy_`` under ``aten::_convolution`` in
  ``torch.profiler``): a convolution given a strided input copies it to a dense one first,
  in ATen code shared by the CPU and cuDNN paths — a kernel the count above does not see;
* the CPU time of one float32 forward at a tiny input (``--time-size``, 1 thread, models
  interleaved, median of ``--rounds``): little arithmetic is left, mostly Python and dispatch,
  the CPU side that a GPU's batch-1 eager latency pays.

    python benchmarks/eager_ops.py efficientmod_s efficientmod_s@deploy [--dtype bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from efficientmod.bench import DTYPES, resolve_models

# Operations that only make a new view of the same storage: no kernel runs on a GPU.
VIEW_OPS = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "split", "split_with_sizes",
            "unbind", "unsqueeze", "squeeze", "expand", "slice", "select", "alias", "as_strided", "flatten",
            "unflatten", "detach", "chunk", "view_as", "_reshape_alias", "narrow"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched below autograd (one per kernel call)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(model: torch.nn.Module, x: torch.Tensor) -> Counter[str]:
    with torch.inference_mode(), OpCounter() as counter:
        model(x)
    return counter.ops


def split_views(ops: Counter[str]) -> tuple[int, int]:
    """(operations that launch work, view operations)."""
    views = sum(n for name, n in ops.items() if name in VIEW_OPS)
    return sum(ops.values()) - views, views


def count_conv_input_copies(model: torch.nn.Module, x: torch.Tensor) -> int:
    """``aten::copy_`` calls made inside ``aten::_convolution`` in one forward."""
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)

    def copies(event, in_conv: bool) -> int:
        here = in_conv and event.name == "aten::copy_"
        in_conv = in_conv or event.name == "aten::_convolution"
        return here + sum(copies(child, in_conv) for child in event.cpu_children)

    return sum(copies(event, False) for event in prof.events() if event.cpu_parent is None)


def forward_us(models: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], rounds: int) -> dict:
    """Median microseconds of one forward per model on 1 CPU thread, the models interleaved."""
    times: dict[str, list[float]] = {name: [] for name in models}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(inputs[name])
                    times[name].append((time.perf_counter() - start) * 1e6)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model specs as `efficientmod bench` takes them")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="as the GPU bench's --dtype")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--time-size", type=int, default=32, help="input size of the timed float32 forwards")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved timed forwards per model")
    parser.add_argument("--show", type=int, default=40, help="operations listed per model, most frequent first")
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args(argv)
    dtype, fmt = DTYPES[args.dtype], torch.channels_last if args.channels_last else torch.contiguous_format
    report, timed, timed_inputs = {}, {}, {}
    for candidate in resolve_models(args.models):
        model = copy.deepcopy(candidate.model).eval().to(dtype=dtype).to(memory_format=fmt)
        x = torch.randn(1, *candidate.input_size, dtype=dtype).contiguous(memory_format=fmt)
        ops = count_ops(model, x)
        launches, views = split_views(ops)
        report[candidate.label] = dict(launching_ops=launches, view_ops=views,
                                       conv_input_copies=count_conv_input_copies(model, x), ops=dict(ops.most_common()))
        timed[candidate.label] = candidate.model.eval().to(memory_format=fmt)
        timed_inputs[candidate.label] = torch.randn(1, 3, args.time_size, args.time_size).contiguous(memory_format=fmt)
    for name, us in forward_us(timed, timed_inputs, args.rounds).items():
        report[name]["forward_us_tiny_fp32"] = round(us, 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"{args.dtype}, channels_last={args.channels_last}, torch {torch.__version__}; timed at "
          f"{args.time_size}x{args.time_size} fp32, 1 thread, load {load}")
    for name, entry in report.items():
        print(f"{name}: {entry['launching_ops']} launching ops + {entry['view_ops']} views, "
              f"{entry['conv_input_copies']} copies inside convolutions; "
              f"forward {entry['forward_us_tiny_fp32']:.0f} us")
        print("   " + ", ".join(f"{op} {n}" for op, n in list(entry["ops"].items())[:args.show]))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(dict(dtype=args.dtype, channels_last=args.channels_last, torch=torch.__version__,
                           time_size=args.time_size, load_average_1m=load, models=report), file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
