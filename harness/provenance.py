"""Provenance recorded on every result row: versions, CPU, threads, BLAS, code revision.

The time of measurement is not here: the store stamps it as each row is appended
(:func:`harness.schema.stamp`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: bump when the measurement protocol changes, so stored results are not mistaken for comparable
PROTOCOL_VERSION = 2  # 2: quality from the timed search; k=100 its own operating point
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


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of the harness and method sources (what a failure of the same code depends on; git's
    revision alone misses uncommitted edits)."""
    h = hashlib.sha256()
    for folder in ("harness", "methods"):
        for f in sorted((REPO_ROOT / folder).rglob("*.py")):
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


#: environment variables that change which BLAS kernel runs (this workplace sets both)
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_info() -> dict[str, Any]:
    """The BLAS libraries loaded in this process (threadpoolctl: library, version, kernel
    architecture, threads) and the environment variables that select their kernel.

    Call it after numpy and faiss are imported (the worker does), so their BLAS is listed.
    """
    libraries = []
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            if lib.get("user_api") != "blas":
                continue
            libraries.append({key: lib.get(key) for key in ("internal_api", "version", "architecture",
                                                             "num_threads", "prefix")})
    except Exception as exc:  # noqa: BLE001 - provenance must never stop a run
        libraries.append({"error": f"{type(exc).__name__}: {exc}"})
    return {"libraries": libraries, "env": {k: os.environ.get(k) for k in BLAS_ENV if k in os.environ}}


def provenance() -> dict[str, Any]:
    return {
        "versions": json.dumps(package_versions(), sort_keys=True),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        # OpenMP's wait policy changes faiss timings both ways: spinning threads slow a loaded
        # machine ~10x, passive waiting halves IVF QPS on small batches of an idle one
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "git_revision": git_revision(),
        "code_hash": code_hash(),
        "protocol_version": PROTOCOL_VERSION,
    }


def config_hash(**fields: Any) -> str:
    """Stable hash of a run's configuration (data set fingerprint, method, parameters, k)."""
    payload = json.dumps({**fields, "protocol": PROTOCOL_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
