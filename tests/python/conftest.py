"""Shared fixtures. The suite runs against the built package (pip install -e . or .)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own TIMESHARE settings."""
    for var in ("TIMESHARE", "TIMESHARE_CONF", "TIMESHARE_LOG"):
        monkeypatch.delenv(var, raising=False)


def cuda_torch_python() -> str | None:
    """A Python whose torch is a CUDA build (for the registration tests), or None."""
    candidates = [os.environ.get("TIMESHARE_CUDA_TORCH_PYTHON", ""),
                  str(ROOT / ".venv-cuda/bin/python")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    return None


@pytest.fixture(scope="session")
def _timeshare_only_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding only a link to the installed timeshare package, so a subprocess of
    another interpreter (the CUDA-torch venv) imports our timeshare but its own torch."""
    d = tmp_path_factory.mktemp("ts_path")
    (d / "timeshare").symlink_to(Path(__import__("timeshare").__file__).resolve().parent)
    return str(d)


@pytest.fixture
def python_env(_timeshare_only_path: str) -> dict[str, str]:
    """Environment for subprocesses that import this checkout's timeshare."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMESHARE")}
    env["PYTHONPATH"] = _timeshare_only_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


__all__ = ["ROOT", "cuda_torch_python", "sys"]
