"""The papers' speed claims (``assets/paper_results.json``) next to the speed-ups measured here."""
from __future__ import annotations

from dataclasses import dataclass

from efficientmod.bench.backends import BACKENDS
from efficientmod.bench.protocol import BenchReport
from efficientmod.bench.specs import paper_results

__all__ = ["ClaimCheck", "paper_claims", "check_claims"]


@dataclass(frozen=True)
class ClaimCheck:
    """The speed-up of ``ours`` over ``peer`` measured on one backend, next to the paper's
    figure when the paper states one for that kind of backend."""

    ours: str
    peer: str
    metric: str  # "latency" (peer / ours, batch 1) or "throughput" (ours / peer)
    backend: str
    measured_speedup: float | None
    paper_speedup: float | None = None
    stated: str = ""
    source: str = ""
    why_missing: str = ""
    note: str = ""  # why the figure may not be comparable (too few cores for the thread count)


def paper_claims() -> list[dict]:
    """The papers' claims. ``efficientvit_m2`` falls back to ``timm:efficientvit_m2`` while
    this library's own EfficientViT is not registered."""
    from efficientmod.models import list_models

    registered = set(list_models())
    claims = []
    for claim in paper_results()["claims"]:
        ours = claim["ours"] if claim["ours"] in registered else f"timm:{claim['ours']}"
        claims.append({**claim, "ours": ours})
    return claims


def check_claims(report: BenchReport, claims: list[dict]) -> list[ClaimCheck]:
    """For each (ours, peer, metric) pair of ``claims``, one :class:`ClaimCheck` per backend
    of the run, carrying the paper's figure where a claim names that backend; a claim none
    of whose backends was asked for still gets a line, without a measurement."""
    checks = []
    run = report.settings.backends
    for ours, peer, metric in dict.fromkeys((c["ours"], c["peer"], c["metric"]) for c in claims):
        pair = [c for c in claims if (c["ours"], c["peer"], c["metric"]) == (ours, peer, metric)]
        stated = {b: c for c in pair for b in c["backends"]}
        for backend in run:
            measured, why = _speedup(report, ours, peer, metric, backend)
            claim = stated.get(backend, {})
            checks.append(ClaimCheck(ours, peer, metric, backend, measured, claim.get("speedup"),
                                     claim.get("stated", ""), claim.get("source", ""), why,
                                     cores_note(report, backend, claim.get("threads"))))
        for claim in pair:
            if not set(claim["backends"]) & set(run):
                backend = claim["backends"][0]
                checks.append(ClaimCheck(ours, peer, metric, backend, None, claim["speedup"], claim["stated"],
                                         claim["source"], f"not run (add -b {backend})"))
    return checks


def cores_note(report: BenchReport, backend: str, paper_threads: int | None) -> str:
    """On a CPU backend, a note when this machine has fewer logical CPUs than the threads
    the figure was measured with here or in the paper (then the threads share cores and
    the ratio is not the paper's protocol); else ''."""
    cores = report.environment.get("logical_cpus") or 0
    if BACKENDS[backend].device != "cpu" or not cores:
        return ""
    threads = max(report.settings.threads, paper_threads or 0)
    if threads <= cores:
        return ""
    return (f"this machine has {cores} logical CPU(s), fewer than the {threads} threads "
            f"{'of the paper' if (paper_threads or 0) >= report.settings.threads else 'asked for'}: "
            "threads share cores, not the paper's protocol")


def _speedup(report: BenchReport, ours: str, peer: str, metric: str, backend: str) -> tuple[float | None, str]:
    """(ours' speed-up over peer, why it is missing)."""
    if backend in report.skipped:
        return None, f"skipped: {report.skipped[backend]}"
    mine, theirs = report.row(ours, backend), report.row(peer, backend)
    if mine is None or theirs is None:
        return None, "not measured"
    if metric == "latency" and mine.latency_ms_median and theirs.latency_ms_median:
        return theirs.latency_ms_median / mine.latency_ms_median, ""
    if metric == "throughput" and mine.throughput_img_s and theirs.throughput_img_s:
        return mine.throughput_img_s / theirs.throughput_img_s, ""
    return None, mine.error or theirs.error or f"no {metric} measured"
