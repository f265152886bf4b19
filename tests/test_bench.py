"""`efficientmod bench`: the measurement logic, the papers' claims, the CLI end to end on CPU."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import time
import types

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn as nn
from benchmark_scripts import BENCHMARKS, load_script

from efficientmod.bench import (
    BACKENDS,
    Backend,
    BackendOptions,
    BenchReport,
    BenchRow,
    BenchSettings,
    Candidate,
    benchmark,
    check_claims,
    count_macs,
    count_params,
    expand_specs,
    measure,
    pareto_front,
    plot_accuracy_latency,
    protocol,
    resolve_models,
    time_calls,
)
from efficientmod.bench import backends as bench_backends
from efficientmod.bench.backends import CompiledModels, Requirement
from efficientmod.bench.claims import cores_note
from efficientmod.cli import main

CPU = dict(backends=("torch-cpu",), threads=1)


class Sleeper(nn.Module):
    """A model whose cost is known: ``base_s + per_image_s × batch`` of sleep per call."""

    def __init__(self, base_s: float, per_image_s: float = 0.0, oom_above_batch: int | None = None):
        super().__init__()
        self.base_s, self.per_image_s, self.oom_above_batch = base_s, per_image_s, oom_above_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.oom_above_batch is not None and x.shape[0] > self.oom_above_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        time.sleep(self.base_s + self.per_image_s * x.shape[0])
        return x.mean((2, 3))


# --------------------------------------------------------------------------- counting

def test_macs_of_known_layers_are_exact():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_macs(conv, (3, 16, 16)) == 8 * 16 * 16 * 3 * 3 * 3
    depthwise = nn.Conv2d(8, 8, kernel_size=7, padding=3, groups=8)
    assert count_macs(depthwise, (8, 10, 10)) == 8 * 10 * 10 * 7 * 7
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert count_macs(linear, (3, 4, 4)) == 48 * 10
    assert count_params(linear) == 48 * 10 + 10


# --------------------------------------------------------------------------- timing

def test_time_calls_times_each_call_after_untimed_warmup():
    calls = []

    def step():
        calls.append(None)
        time.sleep(0.3 if len(calls) == 1 else 0.01)  # the first call pays a "compilation"

    times = time_calls(step, runs=5, warmup=2)
    assert len(calls) == 7 and len(times) == 5
    assert all(0.0095 <= t < 0.25 for t in times), times  # the 0.3 s first call is not among them


def test_time_calls_synchronises_before_timing_and_after_every_timed_call():
    events = []
    time_calls(lambda: events.append("step"), runs=3, warmup=2, sync=lambda: events.append("sync"))
    assert events == ["step", "step", "sync"] + ["step", "sync"] * 3


class FakeClock:
    """``time.perf_counter`` that only moves when a model call says so."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class Ticker(nn.Module):
    """Each call advances the fake clock by the next of ``costs_s``, after one free call
    (the MAC count's). The backends' copies share the clock and the costs."""

    def __init__(self, clock: FakeClock, costs_s: list[float]):
        super().__init__()
        self.clock, self.costs_s = clock, iter([0.0, *costs_s])

    def __deepcopy__(self, memo):
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += next(self.costs_s)
        return x


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    clock_module = types.SimpleNamespace(perf_counter=fake.perf_counter, strftime=time.strftime, gmtime=time.gmtime)
    for timing_module in (protocol, measure):
        monkeypatch.setattr(timing_module, "time", clock_module)
    return fake


def test_latency_statistics_of_known_call_times(clock):
    """Warm-up calls (a 60 s "compilation") stay out; median, p90, mean and min are those of
    the timed calls, p90 by linear interpolation."""
    timed_ms = [7, 3, 10, 1, 5, 9, 2, 8, 4, 6]
    ticker = Ticker(clock, [60.0, 0.5] + [t / 1e3 for t in timed_ms])
    settings = BenchSettings(**CPU, runs=10, warmup=2, batch=0)
    (row,) = benchmark([Candidate("ticker", "test", ticker, (3, 4, 4))], settings).rows
    assert row.error == ""
    assert row.latency_ms_median == pytest.approx(5.5)
    assert row.latency_ms_p90 == pytest.approx(9.1)  # 9 + 0.1 × (10 − 9)
    assert (row.latency_ms_mean, row.latency_ms_min) == (pytest.approx(5.5), pytest.approx(1.0))
    assert row.setup_s == pytest.approx(60.5) and (row.warmup_runs, row.latency_runs) == (2, 10)


def test_a_backend_minimum_warmup_keeps_compilation_out_of_the_figures(clock, monkeypatch):
    """With --warmup 0, a backend whose first calls compile still gets its untimed calls."""
    compiled = Backend("fake-compiled", "cpu", "test", BACKENDS["torch-cpu"].prepare, min_warmup=2)
    monkeypatch.setitem(BACKENDS, compiled.name, compiled)
    ticker = Ticker(clock, [30.0, 1.0] + [0.002] * 3 + [5.0, 1.0] + [0.008] * 2)
    settings = BenchSettings(backends=(compiled.name,), threads=1, runs=3, warmup=0, batch=4, throughput_runs=2)
    (row,) = benchmark([Candidate("ticker", "test", ticker, (3, 4, 4))], settings).rows
    assert row.error == "" and row.warmup_runs == 2
    assert (row.latency_ms_median, row.latency_ms_p90) == (pytest.approx(2.0), pytest.approx(2.0))
    assert row.throughput_img_s == pytest.approx(4 / 0.008)  # the 5 s and 1 s batches were warm-up


def test_known_sleep_cost_is_measured_within_tolerance():
    base, per_image, batch = 0.010, 0.002, 4
    settings = BenchSettings(**CPU, runs=7, warmup=1, batch=batch, throughput_runs=3)
    (row,) = benchmark([("sleeper", "test", Sleeper(base, per_image), (3, 8, 8))], settings).rows
    expected_ms = (base + per_image) * 1e3
    assert expected_ms * 0.98 <= row.latency_ms_median <= expected_ms * 2.0
    assert row.latency_ms_min <= row.latency_ms_median <= row.latency_ms_p90
    ideal_img_s = batch / (base + per_image * batch)
    assert ideal_img_s * 0.5 <= row.throughput_img_s <= ideal_img_s * 1.02
    assert (row.latency_runs, row.warmup_runs, row.throughput_runs, row.throughput_batch) == (7, 1, 3, batch)
    assert (row.params, row.macs, row.threads, row.error) == (0, 0, 1, "")


def test_out_of_memory_is_reported_per_row_and_the_rest_runs_on():
    settings = BenchSettings(**CPU, runs=2, warmup=0, batch=4, throughput_runs=1)
    report = benchmark([
        Candidate("too-big", "test", Sleeper(0.0, oom_above_batch=1), (3, 8, 8)),
        Candidate("fits", "test", Sleeper(0.0), (3, 8, 8)),
    ], settings)
    too_big, fits = report.rows
    assert too_big.error == "out of GPU memory at batch 4"
    assert too_big.latency_ms_median is not None and too_big.throughput_img_s is None
    assert fits.error == "" and fits.throughput_img_s > 0


class Interrupting(nn.Module):
    def forward(self, x):
        raise KeyboardInterrupt


def test_an_interrupted_run_keeps_the_rows_measured_so_far(tmp_path):
    """Ctrl-C or a time limit's SIGTERM mid-run: the rows measured by then are reported and
    written, marked as interrupted (benchmarks/gpu_check.sh stops late steps this way)."""
    settings = BenchSettings(**CPU, runs=2, warmup=0, batch=0)
    report = benchmark([("first", "test", Sleeper(0.0), (3, 8, 8)), ("stopped", "test", Interrupting(), (3, 8, 8)),
                        ("never", "test", Sleeper(0.0), (3, 8, 8))], settings)
    assert report.interrupted and [r.model for r in report.rows] == ["first"]
    assert report.to_dict()["interrupted"] is True


def test_a_model_failing_at_the_input_size_gets_error_rows():
    settings = BenchSettings(**CPU, runs=1, warmup=0, batch=0)
    broken = nn.Linear(5, 5)  # cannot take an image
    report = benchmark([("broken", "test", broken, (3, 8, 8)), ("fine", "test", Sleeper(0.0), (3, 8, 8))], settings)
    assert report.rows[0].error.startswith("fails at input (3, 8, 8): RuntimeError")
    assert report.rows[1].error == "" and report.rows[1].throughput_img_s is None  # batch 0: no throughput


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the note given when CUDA is absent")
def test_gpu_backends_are_skipped_with_a_note_without_cuda(capsys):
    settings = BenchSettings(backends=("torch-cuda", "compile-cuda", "cudagraph-cuda"), runs=1, warmup=0)
    report = benchmark([("sleeper", "test", Sleeper(0.0), (3, 8, 8))], settings)
    assert report.rows == []
    assert set(report.skipped) == {"torch-cuda", "compile-cuda", "cudagraph-cuda"}
    assert all("CUDA is not available" in reason for reason in report.skipped.values())
    assert "skipping torch-cuda" in capsys.readouterr().err


def test_unknown_backend_and_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown backend 'torch-gpu'. Did you mean torch-cpu"):
        BenchSettings(backends=("torch-gpu",))
    with pytest.raises(ValueError, match="runs must be at least 1"):
        BenchSettings(runs=0)


# --------------------------------------------------------------------------- results

def test_pareto_front_keeps_undominated_models_fastest_first():
    points = [(1.0, 70.0), (2.0, 69.0), (3.0, 75.0), (4.0, 75.0), (0.5, 60.0), (3.0, 74.0)]
    assert pareto_front(points) == [4, 0, 2]


def _row(model: str, backend: str, latency: float, throughput: float | None) -> BenchRow:
    return BenchRow(model, "f", backend, "fp32", 1, (3, 8, 8), 1, 1, None, "",
                    latency_ms_median=latency, throughput_img_s=throughput)


def test_plot_takes_more_families_than_colours(tmp_path):
    rows = [dataclasses.replace(_row(f"m{i}", "torch-cpu", 1.0 + i, None), family=f"family{i}", top1=60.0 + i)
            for i in range(12)]
    report = BenchReport(rows, BenchSettings(), measure.environment(1))
    plot_accuracy_latency(report, tmp_path / "plot.png")
    assert matplotlib.image.imread(tmp_path / "plot.png").ndim == 3
    unmeasured = dataclasses.replace(report, rows=[dataclasses.replace(r, latency_ms_median=None) for r in rows])
    with pytest.raises(ValueError, match="no model has both a published top-1 and a measured latency"):
        plot_accuracy_latency(unmeasured, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_claims_compare_measured_speedups_with_the_papers():
    report = BenchReport(
        rows=[_row("ours", "torch-cpu", 10.0, 400.0), _row("peer", "torch-cpu", 25.0, 100.0)],
        settings=BenchSettings(backends=("torch-cpu", "torch-cuda")), environment={},
        skipped={"torch-cuda": "CUDA is not available on this machine"},
    )
    claims = [
        {"ours": "ours", "peer": "peer", "metric": "latency", "backends": ["torch-cuda"],
         "speedup": 1.25, "stated": "25% faster on GPU", "source": "paper"},
        {"ours": "ours", "peer": "peer", "metric": "throughput", "backends": ["torch-cpu"],
         "speedup": 3.7, "stated": "3.7x on CPU", "source": "paper"},
    ]
    latency_cpu, latency_gpu, throughput_cpu, throughput_gpu = check_claims(report, claims)
    assert (latency_cpu.measured_speedup, latency_cpu.paper_speedup) == (2.5, None)
    assert latency_gpu.measured_speedup is None and latency_gpu.paper_speedup == 1.25
    assert latency_gpu.why_missing == "skipped: CUDA is not available on this machine"
    assert (throughput_cpu.measured_speedup, throughput_cpu.paper_speedup) == (4.0, 3.7)
    assert throughput_gpu.paper_speedup is None

    cpu_only = dataclasses.replace(report, settings=BenchSettings(backends=("torch-cpu",)), skipped={})
    latency_cpu, latency_gpu, throughput_cpu = check_claims(cpu_only, claims)
    assert (latency_gpu.backend, latency_gpu.paper_speedup) == ("torch-cuda", 1.25)
    assert latency_gpu.why_missing == "not run (add -b torch-cuda)"


# --------------------------------------------------------------------------- model specs

def test_specs_expand_globs_in_registry_order_without_repeats():
    assert expand_specs(["efficientmod_x*", "efficientmod_xs", "timm:mobilevit_xxs"]) == [
        "efficientmod_xxs", "efficientmod_xs", "timm:mobilevit_xxs"]
    with pytest.raises(ValueError, match="no model matches"):
        expand_specs(["nothing_*"])


def test_timm_peer_takes_its_paper_top1_and_the_requested_size():
    (peer,) = resolve_models(["timm:mobilevit_xxs"], img_size=64)
    expected = ("timm:mobilevit_xxs", "MobileViT", 69.0, (3, 64, 64))
    assert (peer.label, peer.family, peer.top1, peer.input_size) == expected
    assert "MobileViT" in peer.top1_source


@pytest.mark.parametrize("spec, message", [
    ("efficientmod_ss", "Did you mean: efficientmod_s"),
    ("timm:mobilevit_xxz", "Did you mean: timm:mobilevit_xxs"),
    ("efficientmod_s@fused", "unknown suffix"),
])
def test_unknown_models_name_the_closest(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_models([spec])


def test_deploy_suffix_applies_efficientmod_deploy():
    from efficientmod.fuse import is_deployed

    (candidate,) = resolve_models(["efficientmod_xxs@deploy"], img_size=32)
    assert candidate.label == "efficientmod_xxs@deploy" and is_deployed(candidate.model)
    assert not candidate.model.training


# --------------------------------------------------------------------------- the command

TINY = ["--img-size", "64", "--runs", "3", "--warmup", "1", "--batch", "2", "--throughput-runs", "1",
        "--threads", "1", "--no-progress"]


def test_cli_end_to_end_writes_json_csv_and_plot(tmp_path, capsys):
    out = {kind: tmp_path / f"bench.{kind}" for kind in ("json", "csv", "png")}
    status = main(["bench", "efficientmod_xxs", "--compare", "mobilevit_xxs", "-b", "torch-cpu", "ort-cpu",
                   "torch-cuda", *TINY, "--json", str(out["json"]), "--csv", str(out["csv"]),
                   "--plot", str(out["png"])])
    assert status == (0 if torch.cuda.is_available() else 1)  # a backend named with -b is missing: exit 1
    table = capsys.readouterr().out
    assert "efficientmod_xxs" in table and "timm:mobilevit_xxs" in table and "machine:" in table

    data = json.loads(out["json"].read_text())
    rows = data["rows"]
    assert [(r["model"], r["backend"]) for r in rows] == [
        ("efficientmod_xxs", "torch-cpu"), ("efficientmod_xxs", "ort-cpu"),
        ("timm:mobilevit_xxs", "torch-cpu"), ("timm:mobilevit_xxs", "ort-cpu")]
    for r in rows:
        assert r["error"] == "" and r["latency_runs"] == 3 and r["input_size"] == [3, 64, 64]
        assert 0 < r["latency_ms_min"] <= r["latency_ms_median"] <= r["latency_ms_p90"] < math.inf
        assert r["latency_ms_min"] <= r["latency_ms_mean"] <= r["latency_ms_p90"]  # 3 runs: p90 lies near the max
        assert r["throughput_batch"] == 2 and 0 < r["throughput_img_s"] < math.inf
    assert rows[0]["params"] == 4_736_264 and rows[0]["top1"] == 76.0
    assert data["settings"]["threads"] == 1 and data["environment"]["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert "torch-cuda" in data["skipped_backends"]

    with open(out["csv"], newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["model"] for r in csv_rows] == [r["model"] for r in rows]
    assert float(csv_rows[1]["latency_ms_median"]) == pytest.approx(rows[1]["latency_ms_median"])
    assert csv_rows[0]["env_cpu"] == data["environment"]["cpu"]

    image = matplotlib.image.imread(out["png"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 2 * image.shape[0]  # two panels


def test_cli_paper_preset_runs_on_cpu(capsys):
    status = main(["bench", "--paper", "-b", "torch-cpu", "torch-cuda", *TINY])
    assert status == (0 if torch.cuda.is_available() else 1)
    out = capsys.readouterr().out
    assert "timm:efficientformerv2_s2" in out and "timm:mobilevit_xxs" in out
    assert "25% faster on GPU" in out and "3.7x faster on CPU" in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "efficientmod_zz"], "Unknown model 'efficientmod_zz'"),
    (["bench", "efficientmod_s", "-b", "onnx-cpu"], "unknown backend 'onnx-cpu'"),
    (["bench"], "name at least one model"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- exit status, int8 / OpenVINO rows

def _absent(monkeypatch, backend: str) -> None:
    """``backend`` declares a requirement this machine lacks."""
    lacking = Requirement("efficientmod_no_such_module", "absent (test)")
    monkeypatch.setitem(BACKENDS, backend, dataclasses.replace(BACKENDS[backend], requires=(lacking,)))


def test_cli_exits_1_when_a_named_backend_is_missing_or_nothing_is_measured(capsys, monkeypatch):
    _absent(monkeypatch, "ort-cpu")
    assert main(["bench", "efficientmod_xxs", "-b", "torch-cpu", "ort-cpu", *TINY, "--batch", "0"]) == 1
    captured = capsys.readouterr()
    assert "efficientmod_xxs" in captured.out and "named backend(s) not available here: ort-cpu" in captured.err
    assert main(["bench", "efficientmod_xxs", "-b", "ort-cpu", *TINY]) == 1
    assert "nothing was measured" in capsys.readouterr().err


def test_default_backends_missing_are_only_noted(capsys, monkeypatch):
    monkeypatch.setattr("efficientmod.cli.bench.DEFAULT_BACKENDS", ("torch-cpu", "ort-cpu"))
    _absent(monkeypatch, "ort-cpu")
    assert main(["bench", "efficientmod_xxs", *TINY, "--batch", "0"]) == 0
    assert "skipping ort-cpu: absent (test)" in capsys.readouterr().err


def test_openvino_backends_name_the_extra_when_absent(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in ("openvino", "nncf")
                        else real(name, *rest))
    for backend in ("openvino-cpu", "openvino-cpu-bf16", "openvino-cpu-int8"):
        assert "pip install 'efficientmod[openvino]'" in BACKENDS[backend].unavailable_reason()
    assert BACKENDS["ort-cpu-int8"].unavailable_reason() is None


def test_ort_int8_backend_measures_and_reports_its_precision():
    settings = BenchSettings(backends=("ort-cpu-int8",), threads=1, runs=2, warmup=1, batch=2, throughput_runs=1)
    model = resolve_models(["efficientmod_xxs@deploy"], img_size=32)
    (row,) = benchmark(model, settings).rows
    assert row.error == "" and row.dtype == "int8" and row.latency_ms_median > 0 and row.throughput_img_s > 0


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
                    reason="OpenVINO / NNCF not installed: pip install 'efficientmod[openvino]'")
def test_openvino_backends_measure_and_report_their_precision():
    backends = ("openvino-cpu", "openvino-cpu-bf16", "openvino-cpu-int8")
    settings = BenchSettings(backends=backends, threads=1, runs=2, warmup=1, batch=2, throughput_runs=1)
    rows = benchmark(resolve_models(["efficientmod_xxs@deploy"], img_size=32), settings).rows
    assert [(r.backend, r.dtype, r.error) for r in rows] == [
        ("openvino-cpu", "fp32", ""), ("openvino-cpu-bf16", "bf16", ""), ("openvino-cpu-int8", "int8", "")]
    assert all(r.latency_ms_median > 0 and r.throughput_img_s > 0 for r in rows)


def test_paper_claims_note_fewer_cores_than_threads():
    report = BenchReport([], BenchSettings(backends=("torch-cpu", "torch-cuda"), threads=4),
                         {"logical_cpus": 2}, {})
    assert "2 logical CPU(s), fewer than the 4 threads asked for" in cores_note(report, "torch-cpu", None)
    assert "of the paper" in cores_note(report, "torch-cpu", 8)
    assert cores_note(report, "torch-cuda", 8) == ""  # GPU figures do not depend on the cores
    quiet = dataclasses.replace(report, environment={"logical_cpus": 4})
    assert cores_note(quiet, "torch-cpu", 1) == ""
    checks = check_claims(report, [dict(ours="a", peer="b", metric="latency", backends=["torch-cpu"], speedup=2.0,
                                        stated="", source="")])
    assert "fewer than the 4 threads" in checks[0].note and checks[1].note == ""


# --------------------------------------------------------------------------- the GPU paths, shown on CPU

def test_compiled_backends_compile_static_shapes(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    make_step = bench_backends.torch_steps(nn.Conv2d(3, 4, 1), (3, 8, 8), BackendOptions(threads=1), "cpu",
                                           compiled=True)
    make_step(1)(), make_step(4)()
    assert calls == [{"dynamic": False}]  # a batch size change recompiles, static


def test_compiled_backends_of_one_model_share_one_compilation(monkeypatch):
    """compile-cuda and cudagraph-cuda of a model measure one compiled copy: each batch size
    compiles once, not once per backend (the H200 run spent half its time compiling twice)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)
    model, other = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
    options = BenchSettings(**CPU).backend_options(CompiledModels())  # what benchmark() makes per candidate
    bench_backends.torch_steps(model, (3, 8, 8), options, "cpu", compiled=True)(1)()
    bench_backends.torch_steps(model, (3, 8, 8), options, "cpu", compiled=True)(4)()
    assert options.compilations.get(model, (3, 8, 8), options, "cpu") is compiled[0]
    bench_backends.torch_steps(other, (3, 8, 8), options, "cpu", compiled=True)
    assert len(compiled) == 2
    fresh = BenchSettings(**CPU).backend_options(CompiledModels())  # the next candidate: its own copies
    bench_backends.torch_steps(model, (3, 8, 8), fresh, "cpu", compiled=True)
    assert len(compiled) == 3


def test_benchmark_compiles_each_model_once_for_all_its_compiled_backends(monkeypatch):
    """Through benchmark(): two compiled backends of a model measure one compilation (four
    backend-model pairs, two compilations)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)

    def compiled_on_cpu(model, input_size, options):
        return bench_backends.torch_steps(model, input_size, options, "cpu", compiled=True)

    for name in ("fake-compiled", "fake-compiled-twin"):
        monkeypatch.setitem(BACKENDS, name, Backend(name, "cpu", "test", compiled_on_cpu))
    settings = BenchSettings(backends=("fake-compiled", "fake-compiled-twin"), threads=1, runs=1, warmup=0, batch=0)
    report = benchmark([("a", "test", nn.Conv2d(3, 4, 1), (3, 8, 8)), ("b", "test", nn.Conv2d(3, 4, 1), (3, 8, 8))],
                       settings)
    assert [r.error for r in report.rows] == [""] * 4 and len(compiled) == 2


def test_compilation_follows_an_eager_call_that_fills_first_call_caches(monkeypatch):
    """timm's EfficientViT gathers its attention biases into a dict on its first eval call.
    Traced with the dict empty, the compiled graph creates that tensor (and CUDA-graph trees
    then read one replay's output in the next: the H200 failure); the eager call first fills it."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientvit_m0", img_size=64).eval()

    def caches(module):
        return [len(m.attention_bias_cache) for m in module.modules() if hasattr(m, "attention_bias_cache")]

    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    assert all(caches(model))
    assert not any(caches(bench_backends.converted(model, BackendOptions(threads=1), "cpu")))  # .to() empties them
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kwargs: seen.append(caches(m)) or m)
    bench_backends.torch_steps(model, (3, 64, 64), BackendOptions(threads=1), "cpu", compiled=True)
    assert len(seen) == 1 and seen[0] and all(seen[0])


def test_gpu_backends_convert_model_and_inputs_instead_of_autocast():
    options = BenchSettings(backends=("torch-cuda",), dtype="bf16").backend_options(CompiledModels())
    step = bench_backends.torch_steps(nn.Conv2d(3, 4, 1), (3, 8, 8), options, "meta")(2)  # "meta": any non-CPU
    assert step().dtype == torch.bfloat16
    cpu_step = bench_backends.torch_steps(nn.Conv2d(3, 4, 1), (3, 8, 8), options, "cpu")(2)
    assert cpu_step().dtype == torch.float32  # CPU backends stay float32 whatever --dtype says


def test_cuda_settings_are_explicit_and_restored():
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = flags[0].benchmark, flags[1].allow_tf32, flags[0].allow_tf32
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = False, True  # what training left
    try:
        with bench_backends.cuda_settings():
            assert (flags[0].benchmark, flags[1].allow_tf32, flags[0].allow_tf32) == (True, False, True)
        assert (flags[0].benchmark, flags[1].allow_tf32) == (False, True)
    finally:
        flags[0].benchmark, flags[1].allow_tf32, flags[0].allow_tf32 = before


class CompileOOM(nn.Module):
    """Fails above batch 1 as inductor's autotuning does when the GPU is full: the OOM wrapped
    in another error."""

    def forward(self, x):
        if len(x) == 1:
            return x.mean((2, 3))
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.cuda.OutOfMemoryError as oom:
            raise RuntimeError("autotuning failed") from oom


def test_wrapped_out_of_memory_is_recognised():
    assert measure.is_out_of_memory(RuntimeError("x")) is False
    with pytest.raises(RuntimeError) as info:
        CompileOOM()(torch.zeros(2, 3, 8, 8))
    assert measure.is_out_of_memory(info.value)
    settings = BenchSettings(**CPU, runs=1, warmup=0, batch=4)
    (row,) = benchmark([Candidate("oom", "test", CompileOOM(), (3, 8, 8))], settings).rows
    assert row.error == "out of GPU memory at batch 4" and row.latency_ms_median is not None


# --------------------------------------------------------------------------- a fair baseline (issue 20)

@pytest.fixture
def exports(monkeypatch):
    """Every ONNX export the backends make: its settings and the input shape of the file."""
    import onnx

    import efficientmod.export

    real, seen = efficientmod.export.export_onnx, []

    def recording(model, path, input_size, **settings):
        written = real(model, path, input_size, **settings)
        dims = onnx.load(str(written)).graph.input[0].type.tensor_type.shape.dim
        seen.append(dict(settings, input_size=tuple(input_size), shape=[d.dim_value or d.dim_param for d in dims]))
        return written

    monkeypatch.setattr(efficientmod.export, "export_onnx", recording)
    return seen


@pytest.mark.parametrize("backend", ["ort-cpu", "ort-cpu-int8"])
def test_ort_backends_export_ours_and_the_reference_alike_with_static_shapes(backend, exports):
    """The undeployed model (the official architecture) and ours, deployed, reach ONNX Runtime
    through one export declaration: same exporter settings, the batch fixed in the graph."""
    reference, ours = resolve_models(["efficientmod_xxs", "efficientmod_xxs@deploy"], img_size=32)
    for candidate in (reference, ours):
        make_step = BACKENDS[backend].prepare(candidate.model, candidate.input_size, BackendOptions(threads=1))
        make_step(1)(), make_step(2)()
    assert len(exports) == 4
    assert exports[:2] == exports[2:]  # the reference's exports == ours
    assert [e["shape"] for e in exports[:2]] == [[1, 3, 32, 32], [2, 3, 32, 32]]  # static: one per batch size
    assert exports[0] == dict(opset=18, dynamic_batch=False, batch=1, input_size=(3, 32, 32), shape=[1, 3, 32, 32])


def _cpu_frontier():
    return load_script("cpu_frontier")


def test_cpu_frontier_exports_baseline_and_deployed_model_the_same_way(exports):
    cpu_frontier = _cpu_frontier()
    entries = cpu_frontier.group_entries("efficientmod_xxs", cpu_frontier.GROUPS["efficientmod_xxs"],
                                         ["ort-cpu", "ort-cpu-int8"], img_size=32, reference_everywhere=True)
    assert [(label, backend, role) for label, _, _, backend, role in entries] == [
        ("efficientmod_xxs (baseline)", "ort-cpu", "reference"),
        ("efficientmod_xxs (reference)", "ort-cpu-int8", "reference"),
        ("efficientmod_xxs@deploy", "ort-cpu", "ours"), ("efficientmod_xxs@deploy", "ort-cpu-int8", "ours")]
    for step in cpu_frontier.prepare(entries, threads=1, batch=1):
        step()
    baseline, reference_int8, ours, ours_int8 = exports
    assert baseline == ours and reference_int8 == ours_int8
    assert baseline["dynamic_batch"] is False and baseline["shape"][0] == 1
    plain = cpu_frontier.group_entries("efficientmod_xxs", "efficientmod_xxs", ["ort-cpu-int8"], img_size=32)
    assert [role for *_, role in plain] == ["reference", "ours"]  # by default the reference runs in ORT fp32 only


def test_cpu_frontier_ratios_to_the_baseline_and_to_the_fastest_reference():
    rows = [dict(role="reference", median_ms=40.0, p10_ms=36.0, throughput_img_s=100.0),
            dict(role="reference", median_ms=20.0, p10_ms=18.0, throughput_img_s=250.0),
            dict(role="ours", median_ms=15.0, p10_ms=9.0, throughput_img_s=500.0)]
    _cpu_frontier().add_ratios(rows)
    ours = rows[2]
    assert (ours["median_ratio"], ours["p10_ratio"], ours["throughput_ratio"]) == (0.375, 0.25, 5.0)
    assert ours["median_ratio_to_fastest_reference"] == 0.75 and ours["p10_ratio_to_fastest_reference"] == 0.5
    assert ours["throughput_ratio_to_fastest_reference"] == 2.0
    assert rows[1]["median_ratio_to_fastest_reference"] == 1.0


def test_every_onnx_backend_declares_its_export_and_requirements():
    onnx_based = {name for name, b in BACKENDS.items() if b.export is not None}
    assert onnx_based == {"ort-cpu", "ort-cpu-int8", "openvino-cpu", "openvino-cpu-bf16", "openvino-cpu-int8"}
    assert all(BACKENDS[name].export.static_batch for name in ("ort-cpu", "ort-cpu-int8"))
    assert {r.module for r in BACKENDS["openvino-cpu-int8"].requires} == {"openvino", "nncf"}
    assert [r.module for r in BACKENDS["compile-cuda"].requires] == ["triton"]


# --------------------------------------------------------------------------- the plot's labels (issue 22)

def test_labels_of_a_crowded_plot_do_not_overlap():
    from matplotlib.text import Text

    from efficientmod.bench.report import accuracy_latency_figure

    names = [f"efficientmod_variant_{i}@deploy" for i in range(12)] + ["far"]
    rows = [dataclasses.replace(_row(name, "torch-cpu", 10.0 + 0.02 * i, None), family=f"family{i % 3}",
                                top1=75.0 + 0.01 * (i % 3)) for i, name in enumerate(names[:-1])]
    rows.append(dataclasses.replace(_row("far", "torch-cpu", 20.0, None), top1=80.0))
    fig = accuracy_latency_figure(BenchReport(rows, BenchSettings(), measure.environment(1)))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the label text, not its leader line
    crowd = ax.transData.transform([(r.latency_ms_median, r.top1) for r in rows[:-1]])
    assert np.ptp(crowd[:, 0]) < boxes[0].width / 3  # the markers are closer than a third of a label's width
    overlapping = [(a.get_text(), b.get_text()) for (a, box_a), (b, box_b)
                   in itertools.combinations(zip(ax.texts, boxes, strict=True), 2) if box_a.overlaps(box_b)]
    assert overlapping == []


# --------------------------------------------------------------------------- ours against the reference (issue 20)

def _row(model: str, backend: str, ms: float | None, img_s: float | None = None) -> BenchRow:
    return BenchRow(model=model, family="f", backend=backend, dtype="fp32", threads=1, input_size=(3, 32, 32),
                    params=1, macs=1, top1=None, top1_source="", latency_ms_median=ms, throughput_img_s=img_s)


def test_a_deployed_model_is_set_against_its_reference_fastest_artifact_and_ort_fp32():
    from efficientmod.bench import format_versus_reference, versus_reference
    from efficientmod.bench.reference import reference_of

    rows = [_row("efficientmod_s", "ort-cpu", 40.0, 50.0), _row("efficientmod_s", "openvino-cpu-bf16", 20.0, 80.0),
            _row("efficientmod_s", "openvino-cpu-int8", None),  # failed: not the fastest
            _row("efficientmod_s@deploy", "openvino-cpu-int8", 15.0, 160.0),
            _row("timm:efficientvit_m4", "ort-cpu", 8.0), _row("efficientvit_m4@deploy", "ort-cpu", 6.0),
            _row("mobilevitv2_100@deploy", "ort-cpu", 30.0)]  # no reference in the run: no ratio
    report = BenchReport(rows, BenchSettings(**CPU), environment={})
    ratios = versus_reference(report)
    assert [(r.ours, r.reference) for r in ratios] == [("efficientmod_s@deploy", "efficientmod_s"),
                                                       ("efficientvit_m4@deploy", "timm:efficientvit_m4")]
    s, m4 = ratios
    assert (s.fastest_backend, s.fastest_ms, s.vs_fastest) == ("openvino-cpu-bf16", 20.0, 0.75)
    assert (s.baseline_ms, s.vs_baseline) == (40.0, 0.375)
    assert (s.best_throughput_backend, s.vs_best_throughput) == ("openvino-cpu-bf16", 2.0)
    assert (m4.vs_fastest, m4.vs_baseline, m4.vs_best_throughput) == (0.75, 0.75, None)
    table = format_versus_reference(ratios)
    assert "0.750x" in table and "0.375x" in table and "2.00x" in table
    labels = {"efficientmod_s", "timm:efficientmod_s"}
    assert reference_of("efficientmod_s@deploy", labels) == "efficientmod_s"  # the official architecture first
    assert reference_of("efficientmod_s", labels) is None


def test_cli_prints_and_writes_the_reference_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = main(["bench", "efficientmod_xxs", "efficientmod_xxs@deploy", "-b", "torch-cpu", *TINY,
                   "--batch", "0", "--json", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "ours against the reference" in out
    (ratio,) = json.loads(path.read_text())["versus_reference"]
    assert ratio["ours"] == "efficientmod_xxs@deploy" and ratio["reference"] == "efficientmod_xxs"
    assert ratio["fastest_backend"] == "torch-cpu" and ratio["vs_fastest"] > 0
    assert ratio["baseline_ms"] is None  # ort-cpu did not run


def test_openvino_int8_forms_channels_first_form_is_the_deployed_model(monkeypatch):
    """benchmarks/openvino_int8_forms.py's channels-first candidate: every modulation block
    rewritten, one permute pair per run of them, the same outputs as the deployed model."""

    from test_deploy import random_model

    from efficientmod.fuse import deploy
    from efficientmod.models.efficientmod import FusedModulationBlock

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports cpu_frontier beside it
    forms = load_script("openvino_int8_forms")
    model = deploy(random_model("efficientmod_xxs"))
    rewritten = forms.channels_first(model)
    kinds = [type(m) for m in rewritten.modules()]
    assert FusedModulationBlock not in kinds
    assert kinds.count(forms.ChannelsFirstModulation) == sum(len(r) for r in model.cfg.expansion_ratios)
    assert kinds.count(forms.Permute) == 2 * len(model.stages)  # every stage has one run of modulation blocks
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), atol=1e-4, rtol=1e-4)
