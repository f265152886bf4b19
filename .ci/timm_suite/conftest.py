"""Runs timm's own ``tests/test_models.py`` (taken from timm's source distribution by
``.ci/timm-suite``, never copied into this repository) on the names this library registers."""
import efficientmod.models  # noqa: F401  (registers efficientmod_*, em_efficientvit_*, em_mobilevitv2_* in timm)

TIMM_MARKERS = ["base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward",
                "fxbackward", "timeout(seconds): per-test limit (pytest-timeout, when installed)"]


def pytest_configure(config):
    for marker in TIMM_MARKERS:  # declared in timm's pyproject, which the sdist's tests do not bring along
        config.addinivalue_line("markers", marker)
