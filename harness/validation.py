"""Validation of a method's search results before they are scored (as ann-benchmarks does).

A result is valid when ``ids`` has shape ``(nq, k)``, every row holds unique ids in ``[0, n)``,
and ``-1`` appears only as trailing padding (fewer than k results, e.g. an IVF probe that found
too few vectors). ``scores`` must have the same shape. Anything else would be scored wrongly
(a duplicate id counted twice by recall) and becomes a failed row with status ``invalid``.
"""

from __future__ import annotations

import numpy as np


class InvalidResults(ValueError):
    """A method returned malformed search results."""


def validate_results(scores: np.ndarray, ids: np.ndarray, nq: int, k: int, n: int) -> np.ndarray:
    """Return ``ids`` as int64 after checking them; raise :class:`InvalidResults` naming the problem."""
    ids = np.asarray(ids)
    scores = np.asarray(scores)
    if ids.shape != (nq, k):
        raise InvalidResults(f"search returned ids of shape {ids.shape}, expected ({nq}, {k})")
    if scores.shape != ids.shape:
        raise InvalidResults(f"search returned scores of shape {scores.shape} for ids of shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise InvalidResults(f"search returned ids of dtype {ids.dtype}, expected integers")
    ids = ids.astype(np.int64, copy=False)
    bad = (ids < -1) | (ids >= n)
    if bad.any():
        q, j = np.argwhere(bad)[0]
        raise InvalidResults(f"query {q}: id {ids[q, j]} at rank {j} is outside [0, {n}) (and not -1 padding)")
    missing = ids < 0
    # -1 only as trailing padding: once a row has a -1, everything after it is -1
    after_pad = np.logical_and(np.cumsum(missing, axis=1) > 0, ~missing)
    if after_pad.any():
        q, j = np.argwhere(after_pad)[0]
        raise InvalidResults(f"query {q}: id {ids[q, j]} at rank {j} follows -1 padding")
    if k > 1:
        ordered = np.sort(np.where(missing, -1 - np.arange(k)[None, :], ids), axis=1)
        dup = ordered[:, 1:] == ordered[:, :-1]
        if dup.any():
            q = int(np.argwhere(dup)[0][0])
            j = int(np.argwhere(dup[q])[0][0])
            raise InvalidResults(f"query {q}: id {ordered[q, j]} is returned more than once")
    return ids
