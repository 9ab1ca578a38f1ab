"""Per-phase wall times and the build's memory peak, for the result rows (issue 13).

Phases of a run: ``encode_s`` and ``groundtruth_s`` are measured once, when the data set is
prepared, and kept in its ``meta.json`` (``phases``); ``train_s`` / ``build_s`` / ``search_s``
are measured by the worker for each row.

The build peak is the resident high-water mark (``VmHWM``) from the start of ``fit()`` to the end
of ``add()``: the mark is reset to the current RSS through ``/proc/self/clear_refs`` (Linux ≥ 4.0)
just before ``fit()``, so the peak of loading the data, or of an earlier phase, does not count.
``ru_maxrss`` cannot do this (it is the process's maximum since it started); where the reset is
not available the process maximum is used and :attr:`BuildPeak.reset` says so. The base vectors
are read once before the mark is reset (:func:`touch`), so pages of the memory-mapped base first
read by ``add()`` are not taken for the method's memory: the growth is what fit and add allocate.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1 << 20
TOUCH_ROWS = 65536


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def touch(x: np.ndarray) -> None:
    """Read every page of ``x`` (a memory-mapped base) once, chunk by chunk, so it is resident."""
    for r0 in range(0, x.shape[0], TOUCH_ROWS):
        np.add.reduce(x[r0 : r0 + TOUCH_ROWS], axis=None)


class BuildPeak:
    """``p = BuildPeak()``, then ``with p: fit()`` and ``with p: add()`` → ``p.peak_mb`` (the
    high-water RSS inside the blocks), ``p.before_mb`` (RSS when the first began) and
    ``p.growth_mb``: the most the blocks held at once, counting what an earlier block left
    allocated (the fitted model) but not what ran between them (the worker's JIT and BLAS
    warm-ups, whose buffers are the libraries', not the index's). All MiB."""

    def __init__(self) -> None:
        self.before_mb = math.nan
        self.peak_mb = math.nan
        self.growth_mb = 0.0
        self.reset = False
        self._carried_mb = 0.0  # what earlier blocks left allocated
        self._enter_mb = math.nan

    def __enter__(self) -> BuildPeak:
        rss = _status_kb("VmRSS")
        self._enter_mb = rss / 1024 if rss is not None else math.nan
        if math.isnan(self.before_mb):
            self.before_mb = self._enter_mb
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.reset = _status_kb("VmHWM") is not None
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc: Any) -> None:
        hwm = _status_kb("VmHWM") if self.reset else None
        # without the reset: the process maximum (ru_maxrss, KiB on Linux)
        mb = hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.peak_mb = mb if math.isnan(self.peak_mb) else max(self.peak_mb, mb)
        rss = _status_kb("VmRSS")
        if hwm is not None and rss is not None and not math.isnan(self._enter_mb):
            self.growth_mb = max(self.growth_mb, self._carried_mb + mb - self._enter_mb)
            self._carried_mb += max(0.0, rss / 1024 - self._enter_mb)
        else:  # no per-block mark: the process peak over the RSS before the first block
            self.growth_mb = max(self.growth_mb, self.peak_mb - self.before_mb)

    def columns(self) -> dict[str, float]:
        return {"build_peak_rss_mb": float(self.peak_mb), "build_peak_growth_mb": float(self.growth_mb)}


def dataset_columns(meta: dict[str, Any]) -> dict[str, float]:
    """``encode_s`` and ``groundtruth_s`` of a prepared data set (NaN if it was prepared before
    they were recorded)."""
    phases = meta.get("phases") or {}
    return {name: float(phases.get(name, math.nan)) for name in ("encode_s", "groundtruth_s")}
