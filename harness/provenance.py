"""Provenance recorded on every result row: versions, CPU, threads, git revision, time."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: bump when the measurement protocol changes, so stored results are not mistaken for comparable
PROTOCOL_VERSION = 1
PACKAGES = ("vecbudget", "numpy", "faiss-cpu", "hnswlib", "pandas", "torch", "sentence-transformers")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def provenance() -> dict[str, Any]:
    return {
        "versions": json.dumps(package_versions(), sort_keys=True),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        # OpenMP's wait policy changes faiss timings both ways: spinning threads slow a loaded
        # machine ~10x, passive waiting halves IVF QPS on small batches of an idle one
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "git_revision": git_revision(),
        "protocol_version": PROTOCOL_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def config_hash(**fields: Any) -> str:
    """Stable hash of a run's configuration (data set fingerprint, method, parameters, k)."""
    payload = json.dumps({**fields, "protocol": PROTOCOL_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
