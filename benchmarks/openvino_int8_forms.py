"""EfficientMod in OpenVINO bf16 / int8: NNCF placements and a channels-first graph form,
against the reference, timed interleaved in one process, with a per-op-type profile.

    OMP_NUM_THREADS=1 python benchmarks/openvino_int8_forms.py --json benchmarks/results/openvino_int8_forms.json

Issue 20 asks for ours <= 0.75x the reference's fastest artifact and int8 faster than bf16.
This script measures the candidates tried for that (benchmarks/deploy.md, "int8 placements and
graph forms"), every one converted from the same ONNX export as ``efficientmod bench`` makes
(``OPENVINO_EXPORT``), compiled by :func:`efficientmod.export.openvino.compile_openvino` with
static shapes and ``--threads`` threads, and calibrated on the same random images:

* **models**: ``ref`` (the undeployed model: the official architecture), ``ours`` (``deploy``),
  ``cf`` (ours with every run of modulation blocks in channels-first form: token-wise linears as
  1x1 convolutions, LayerNorm over the channel axis, no Transpose around the depthwise conv;
  exact, checked against ``ours`` before timing);
* **precisions**: bf16 inference precision; int8 by NNCF with the shipped placement
  (``quantize_openvino_int8``: element-wise Multiply / Add inputs float, global min-max
  ranges), NNCF's default placement, default with only the Add inputs float
  (the modulation product's inputs int8), and ``ModelType.TRANSFORMER`` (SmoothQuant).

Rounds rotate the order of all entries, so load from other processes hits them alike. Prints
the median and p10 of each entry, its ratio to the reference's fastest entry and to the same
model's bf16; ``--profile`` adds OpenVINO's per-node counters (``PERF_COUNT``) summed by node
and kernel type for the named entries.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from cpu_frontier import interleaved

from efficientmod.bench import environment, resolve_models
from efficientmod.bench.backends import CALIBRATION_IMAGES, OPENVINO_EXPORT
from efficientmod.checkpoint import atomic_write
from efficientmod.export.openvino import compile_openvino, convert_onnx
from efficientmod.export.quantize import quantize_openvino_int8
from efficientmod.fuse import conv1x1_from
from efficientmod.models.efficientmod import FusedModulationBlock

PLACEMENTS = ("shipped", "nncf-default", "float-add", "transformer")


class ChannelsFirstModulation(nn.Module):
    """A :class:`FusedModulationBlock` on an NCHW map: f, v, g and p as 1x1 convolutions, the
    LayerNorm written over the channel axis (the same numbers)."""

    def __init__(self, block: FusedModulationBlock):
        super().__init__()
        self.ratio, self.eps = block.expansion_ratio, block.norm.eps
        self.register_buffer("weight", block.norm.weight.detach()[:, None, None].clone())
        self.register_buffer("bias", block.norm.bias.detach()[:, None, None].clone())
        self.f, self.v, self.g, self.proj = [conv1x1_from(lin.weight[:, :, None, None], lin.bias)
                                             for lin in (block.f, block.v, block.g, block.proj)]
        self.dwconv, self.ctx_act, self.v_act = block.dwconv, block.ctx_act, block.v_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        y = centred / torch.sqrt((centred * centred).mean(1, keepdim=True) + self.eps) * self.weight + self.bias
        context = self.g(self.ctx_act(self.dwconv(self.f(y))))
        v = self.v_act(self.v(y))
        if self.ratio == 1:
            return x + self.proj(context * v)
        batch, dim, height, width = context.shape
        modulated = context.unsqueeze(1) * v.reshape(batch, self.ratio, dim, height, width)
        return x + self.proj(modulated.reshape(batch, self.ratio * dim, height, width))


class Permute(nn.Module):
    def __init__(self, *order: int):
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.order)


def channels_first(deployed: nn.Module) -> nn.Module:
    """A copy of a deployed EfficientMod whose runs of modulation blocks run channels-first,
    between one NHWC->NCHW and one NCHW->NHWC permute (OpenVINO cancels the pairs it meets)."""
    model = copy.deepcopy(deployed)
    for stage in model.stages:
        blocks, run = [], []
        for block in [*stage.blocks, None]:
            if isinstance(block, FusedModulationBlock):
                run.append(ChannelsFirstModulation(block))
                continue
            if run:
                blocks += [Permute(0, 3, 1, 2), *run, Permute(0, 2, 3, 1)]
                run = []
            if block is not None:
                blocks.append(block)
        stage.blocks = nn.Sequential(*blocks)
    return model


def nncf_int8(ov_model, images: np.ndarray, placement: str):
    """``ov_model`` quantised by NNCF with ``placement`` (one of :data:`PLACEMENTS`)."""
    if placement == "shipped":
        return quantize_openvino_int8(ov_model, images)
    import nncf

    options = {"nncf-default": {}, "transformer": dict(model_type=nncf.ModelType.TRANSFORMER),
               "float-add": dict(ignored_scope=nncf.IgnoredScope(types=["Add"], validate=False))}[placement]
    nncf.set_log_level(logging.ERROR)
    return nncf.quantize(ov_model, nncf.Dataset([image[None] for image in images]), subset_size=len(images),
                         fast_bias_correction=True, **options)


def openvino_models(name: str, forms: list[str]) -> tuple[dict, tuple[int, int, int]]:
    """form -> the OpenVINO model (static batch 1) of ``name`` in that form."""
    reference, = resolve_models([name])
    ours, = resolve_models([f"{name}@deploy"])
    models = {"ref": reference.model, "ours": ours.model}
    if "cf" in forms:
        models["cf"] = channels_first(ours.model).eval()
        x = torch.randn(2, *ours.input_size)
        with torch.no_grad():
            error = float((models["cf"](x) - ours.model(x)).abs().max())
        if error > 1e-4:
            raise AssertionError(f"the channels-first form differs from the deployed model by {error:.2e}")
    converted = {}
    for form in forms:
        with tempfile.TemporaryDirectory(prefix="efficientmod-forms-") as folder:
            converted[form] = convert_onnx(OPENVINO_EXPORT.write(models[form], folder, ours.input_size, 1))
        converted[form].reshape([1, *ours.input_size])
    return converted, ours.input_size


def compiled_entries(models: dict, input_size, precisions: list[str], threads: int) -> dict:
    """"form/precision" -> the compiled OpenVINO model."""
    images = np.random.default_rng(0).standard_normal((CALIBRATION_IMAGES, *input_size), dtype=np.float32)
    entries = {}
    for form, ov_model in models.items():
        for precision in precisions:
            if precision == "bf16":
                entries[f"{form}/bf16"] = compile_openvino(ov_model, "bf16", threads)
            else:
                quantised = nncf_int8(ov_model.clone(), images, precision.removeprefix("int8-"))
                entries[f"{form}/{precision}"] = compile_openvino(quantised, "int8", threads)
            print(f"  compiled {form}/{precision}", file=sys.stderr, flush=True)
    return entries


def profile(compiled, x: np.ndarray, calls: int = 20) -> list[tuple[str, str, float]]:
    """(node type, kernel, ms per call) of a model compiled with ``PERF_COUNT``, slowest first."""
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer({0: x})
    totals = collections.Counter()
    for _ in range(calls):
        request.infer({0: x})
        for node in request.get_profiling_info():
            if node.status == node.Status.EXECUTED:
                totals[node.node_type, node.exec_type] += 1e3 * node.real_time.total_seconds() / calls
    return [(node, kernel, ms) for (node, kernel), ms in totals.most_common()]


def profiles(models: dict, input_size, names: list[str], threads: int) -> dict:
    """entry -> its per-op-type profile, each entry compiled again with ``PERF_COUNT`` on."""
    x = np.random.default_rng(1).standard_normal((1, *input_size), dtype=np.float32)
    images = np.random.default_rng(0).standard_normal((CALIBRATION_IMAGES, *input_size), dtype=np.float32)
    result = {}
    for name in names:
        form, precision = name.split("/")
        ov_model = models[form] if precision == "bf16" else nncf_int8(
            models[form].clone(), images, precision.removeprefix("int8-"))
        compiled = compile_openvino(ov_model, "bf16" if precision == "bf16" else "int8", threads, profile=True)
        result[name] = profile(compiled, x)
    return result


def report(times: dict, table: dict) -> list[str]:
    """Markdown rows: median / p10 ms, × the reference's fastest median, × the same form's bf16."""
    medians = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    fastest = min(v for k, v in medians.items() if k.startswith("ref/"))
    lines = ["| entry | median ms | p10 ms | × ref's fastest | × same form's bf16 |", "|---|---|---|---|---|"]
    for key, median in medians.items():
        bf16 = medians.get(key.split("/")[0] + "/bf16")
        table[key] = dict(median_ms=median, p10_ms=float(np.percentile(times[key], 10)) * 1e3,
                          ratio_to_fastest_reference=median / fastest,
                          ratio_to_bf16=None if bf16 is None else median / bf16)
        row = table[key]
        to_bf16 = "-" if bf16 is None else f"{row['ratio_to_bf16']:.3f}"
        lines.append(f"| {key} | {median:.2f} | {row['p10_ms']:.2f} | {row['ratio_to_fastest_reference']:.3f} | "
                     f"{to_bf16} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientmod_s", help="an EfficientMod variant (default efficientmod_s)")
    parser.add_argument("--forms", nargs="+", default=["ref", "ours", "cf"], choices=["ref", "ours", "cf"])
    parser.add_argument("--precisions", nargs="+", default=["bf16", *(f"int8-{p}" for p in PLACEMENTS)],
                        choices=["bf16", *(f"int8-{p}" for p in PLACEMENTS)])
    parser.add_argument("--threads", type=int, default=1, help="OpenVINO threads (default 1)")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds (default 5)")
    parser.add_argument("--profile", nargs="*", default=[], metavar="FORM/PRECISION",
                        help="also print the per-op-type PERF_COUNT profile of these entries (e.g. ours/int8-shipped)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    if "ref" not in args.forms:
        parser.error("--forms must include ref: the ratios are to the reference's fastest entry")
    torch.set_num_threads(args.threads)
    models, input_size = openvino_models(args.model, args.forms)
    entries = compiled_entries(models, input_size, args.precisions, args.threads)
    x = np.random.default_rng(1).standard_normal((1, *input_size), dtype=np.float32)
    requests = {key: compiled.create_infer_request() for key, compiled in entries.items()}
    load_before = os.getloadavg()[0]
    seconds = interleaved([lambda r=r: r.infer({0: x}) for r in requests.values()], args.rounds, args.warmup)
    result = dict(command=" ".join([os.path.basename(sys.executable), *sys.argv]),
                  environment=environment(args.threads), settings=vars(args) | {"json": str(args.json)},
                  load_1m_before=load_before, load_1m_after=os.getloadavg()[0], entries={})
    print(f"**{args.model}**, 1 image, {args.threads} thread(s), load {load_before:.1f} → "
          f"{result['load_1m_after']:.1f}\n")
    print("\n".join(report(dict(zip(requests, seconds, strict=True)), result["entries"])))
    result["profiles"] = profiles(models, input_size, args.profile, args.threads)
    for name, rows in result["profiles"].items():
        total = sum(ms for *_, ms in rows)
        print(f"\n**{name}** per-op-type profile ({total:.1f} ms summed)\n\n| node | kernel | ms | share |\n"
              "|---|---|---|---|")
        print("\n".join(f"| {node} | {kernel} | {ms:.2f} | {100 * ms / total:.1f}% |"
                        for node, kernel, ms in rows[:12]))
    if args.json:
        text = json.dumps(result, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
