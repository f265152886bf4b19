"""Measuring models: parameters, MACs, latency and throughput on every backend.

* :mod:`~efficientmod.bench.protocol`: the settings, the records, timing and its statistics;
* :mod:`~efficientmod.bench.backends`: one :class:`Backend` record per way of running a model,
  declaring what it requires, its precision, its ONNX export and how it prepares a forward pass;
* :mod:`~efficientmod.bench.measure`: :func:`benchmark`, which measures candidates on backends,
  and :func:`environment`, the machine they ran on;
* :mod:`~efficientmod.bench.specs`: command-line specs (``efficientmod_s``, ``efficientvit_m*``,
  ``timm:mobilevit_xxs``, ``efficientmod_s@deploy``) turned into :class:`Candidate`;
* :mod:`~efficientmod.bench.claims`: the papers' speed claims next to the measured ratios;
* :mod:`~efficientmod.bench.reference`: a deployed model against its reference (the
  undeployed official architecture or timm's model) in the same run: ours / the reference's
  fastest artifact, ours / the reference in ONNX Runtime fp32;
* :mod:`~efficientmod.bench.report`: JSON, CSV, text tables and the accuracy-latency plot;
* :mod:`~efficientmod.bench.ablations`: the EfficientMod ablations side by side (imports the
  model families, so it is not imported here).

Models are given as :class:`Candidate` (label, family, module, input size, paper top-1), so
any ``nn.Module`` can be measured.
"""
from efficientmod.bench.backends import BACKENDS, DTYPES, Backend, BackendOptions, CompiledModels, OnnxExport
from efficientmod.bench.claims import ClaimCheck, check_claims, paper_claims
from efficientmod.bench.measure import benchmark, environment
from efficientmod.bench.protocol import (
    BenchReport,
    BenchRow,
    BenchSettings,
    Candidate,
    count_macs,
    count_params,
    time_calls,
)
from efficientmod.bench.reference import ReferenceRatio, format_versus_reference, versus_reference
from efficientmod.bench.report import (
    format_claims,
    format_report,
    pareto_front,
    plot_accuracy_latency,
    write_csv,
    write_json,
)
from efficientmod.bench.specs import expand_specs, resolve_models

__all__ = [
    "count_params", "count_macs", "BACKENDS", "DTYPES", "Backend", "BackendOptions", "CompiledModels", "OnnxExport",
    "Candidate", "BenchSettings", "BenchRow", "BenchReport", "ClaimCheck", "benchmark", "expand_specs",
    "resolve_models", "paper_claims", "check_claims", "environment", "time_calls", "pareto_front", "write_json",
    "write_csv", "format_report", "format_claims", "plot_accuracy_latency", "ReferenceRatio", "versus_reference",
    "format_versus_reference",
]
