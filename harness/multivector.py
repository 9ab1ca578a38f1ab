"""Multi-vector (token-level) embeddings, stored ragged and memory-mapped.

Late-interaction methods (ColBERT-style MaxSim, MUVERA's fixed-dimensional encodings, CRISP's
clustered multi-vectors) need one vector per token rather than one per text. A collection of
``n`` texts with ``T = sum(n_tok_i)`` tokens is stored as

* ``offsets.npy`` — int64 ``(n + 1,)``, ``offsets[0] = 0``, ``offsets[-1] = T``, non-decreasing;
  text ``i`` owns rows ``offsets[i]:offsets[i + 1]``;
* ``flat.npy`` — float32 ``(T, d)``, all token vectors back to back;
* ``meta.json`` — ``n``, ``n_tokens``, ``dim`` and free-form provenance (encoder, role).

Both arrays are memory-mapped on load, so ``rv[i]`` is a zero-copy ``(n_tok_i, d)`` view and a
collection larger than RAM is fine. Folders are written under a temporary name and renamed into
place, so a reader never sees a half-written one.

:func:`encode_tokens` produces them with sentence-transformers
(``encode(..., output_value="token_embeddings")``): every token the tokenizer emits within
``max_length`` is kept, special tokens ([CLS]/[SEP]) and the prompt's tokens included, padding
removed. With ``spec.normalize`` each token vector is L2-normalised (as ColBERT does), so MaxSim
scores are sums of cosines. Encoding is chunked and resumable like :func:`harness.encode.encode_texts`
and cached per (model, texts, prompt, max length, normalisation).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harness.encode import EncoderSpec, cache_key, load_encoder
from harness.errors import DataError, VecbudgetError
from harness.io import atomic_path

FORMAT = "ragged-v1"


@dataclass
class RaggedVectors:
    """``n`` variable-length sets of ``dim``-dimensional vectors: ``offsets`` + one ``flat`` array."""

    offsets: np.ndarray
    flat: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ragged(self.offsets, self.flat, "ragged vectors")

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def __getitem__(self, i: int | slice) -> Any:
        """Text ``i``'s ``(n_tok_i, d)`` view; a slice (step 1) gives a :class:`RaggedVectors` of
        those texts (views, offsets rebased), so batch helpers can slice queries like an array."""
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("ragged vectors: slices need step 1")
            stop = max(start, stop)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            return RaggedVectors(np.asarray(self.offsets[start : stop + 1], dtype=np.int64) - lo,
                                 self.flat[lo:hi], self.info)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} texts")
        i %= n
        return self.flat[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @property
    def shape(self) -> tuple[int, int]:
        """``(texts, dim)``: the leading axis counts texts, as ``shape[0]`` of an (n, d) array does."""
        return len(self), self.dim

    @property
    def dim(self) -> int:
        return int(self.flat.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.flat.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def owners(self) -> np.ndarray:
        """Text index of every row of ``flat`` (int64, length ``n_tokens``)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    @classmethod
    def from_list(cls, items: Sequence[np.ndarray], info: dict[str, Any] | None = None) -> RaggedVectors:
        """Pack a list of ``(n_tok_i, d)`` arrays (copies them into one float32 array)."""
        if not items:
            raise DataError("ragged vectors: no items")
        dims = {np.asarray(a).shape[1] for a in items if np.asarray(a).ndim == 2}
        if any(np.asarray(a).ndim != 2 for a in items) or len(dims) != 1:
            raise DataError("ragged vectors: every item must be a 2-D (tokens, dim) array of one common dim")
        lengths = np.array([len(a) for a in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate([np.asarray(a, dtype=np.float32) for a in items]).reshape(-1, dims.pop())
        return cls(offsets, flat, dict(info or {}))

    def save(self, path: str | Path) -> Path:
        """Write to folder ``path`` atomically (built beside it, renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            np.save(tmp / "offsets.npy", np.asarray(self.offsets, dtype=np.int64))
            out = np.lib.format.open_memmap(tmp / "flat.npy", mode="w+", dtype=np.float32, shape=self.flat.shape)
            step = 1 << 16
            for s in range(0, self.n_tokens, step):
                out[s : s + step] = self.flat[s : s + step]
            out.flush()
            del out
            _write_meta(tmp, len(self), self.n_tokens, self.dim, self.info)
            _replace_dir(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> RaggedVectors:
        """Open a folder written by :meth:`save` (arrays memory-mapped unless ``mmap=False``)."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
            mode = "r" if mmap else None
            offsets = np.load(path / "offsets.npy", mmap_mode=mode)
            flat = np.load(path / "flat.npy", mmap_mode=mode)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"multi-vector folder {path} is unreadable ({exc}); delete it to rebuild") from exc
        if meta.get("format") != FORMAT:
            raise DataError(f"multi-vector folder {path}: unknown format {meta.get('format')!r}")
        check_ragged(offsets, flat, str(path))
        if (len(offsets) - 1, flat.shape[0]) != (meta.get("n"), meta.get("n_tokens")):
            raise DataError(f"multi-vector folder {path}: arrays disagree with meta.json; delete it to rebuild")
        return cls(offsets, flat, meta.get("info", {}))


def check_ragged(offsets: np.ndarray, flat: np.ndarray, what: str) -> None:
    """DataError unless ``offsets`` (int, n+1, from 0, non-decreasing, ending at len(flat)) fits ``flat``."""
    if offsets.ndim != 1 or offsets.shape[0] < 2 or offsets.dtype.kind not in "iu":
        raise DataError(f"{what}: offsets must be a 1-D integer array of n+1 >= 2 entries, got {offsets.shape} {offsets.dtype}")
    if flat.ndim != 2:
        raise DataError(f"{what}: flat must be a 2-D (tokens, dim) array, got shape {flat.shape}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != flat.shape[0]:
        raise DataError(
            f"{what}: offsets run from {int(offsets[0])} to {int(offsets[-1])}, expected 0 to {flat.shape[0]}"
        )
    if (np.diff(offsets) < 0).any():
        raise DataError(f"{what}: offsets decrease at index {int(np.argmax(np.diff(offsets) < 0))}")


def _write_meta(folder: Path, n: int, n_tokens: int, dim: int, info: dict[str, Any]) -> None:
    meta = {"format": FORMAT, "n": int(n), "n_tokens": int(n_tokens), "dim": int(dim), "info": info}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def _replace_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old-{tmp.name}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def _encode_chunk(texts: list[str], spec: EncoderSpec, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    model = load_encoder(spec)
    out = model.encode(
        [prompt + t for t in texts],
        batch_size=spec.batch_size,
        output_value="token_embeddings",
        convert_to_numpy=False,
        show_progress_bar=False,
    )
    mats = [np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t, dtype=np.float32) for t in out]
    lengths = np.array([m.shape[0] for m in mats], dtype=np.int64)
    flat = np.concatenate(mats)
    if spec.normalize:
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        flat = flat / np.where(norms > 0, norms, 1.0)
    return lengths, flat.astype(np.float32)


def encode_tokens(
    texts: list[str],
    spec: EncoderSpec,
    cache_dir: str | Path,
    *,
    role: str = "document",
    chunk: int = 512,
    progress: bool = True,
    desc: str = "encode tokens",
) -> RaggedVectors:
    """Token embeddings of ``texts`` (role "query" or "document" picks the prompt), cached in
    ``cache_dir/tok-<key>/`` and returned memory-mapped. Interrupted runs resume per chunk."""
    if not texts:
        raise VecbudgetError(f"nothing to encode for {desc}: the {role} list is empty")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(texts, spec, role)
    final = cache_dir / f"tok-{key}"
    if (final / "meta.json").exists():
        try:
            rv = RaggedVectors.load(final)
            if len(rv) == len(texts):
                return rv
        except DataError:
            pass
        shutil.rmtree(final, ignore_errors=True)
    parts = cache_dir / f"tok-{key}.parts"
    parts.mkdir(exist_ok=True)
    prompt = spec.prompt(role)
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    files: list[Path] = []
    for i, start in enumerate(range(0, len(texts), chunk)):
        part = parts / f"{i:06d}.npz"
        batch = texts[start : start + chunk]
        ok = False
        if part.exists():
            try:
                with np.load(part) as z:
                    ok = z["lengths"].shape[0] == len(batch) and int(z["lengths"].sum()) == z["flat"].shape[0]
            except (OSError, ValueError, KeyError, EOFError):
                ok = False
        if not ok:
            lengths, flat = _encode_chunk(batch, spec, prompt)
            with atomic_path(part, suffix=".npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, lengths=lengths, flat=flat)
        files.append(part)
        bar.update(len(batch))
    bar.close()

    lengths_all = []
    dim = 0
    for part in files:
        with np.load(part) as z:
            lengths_all.append(z["lengths"])
            dim = int(z["flat"].shape[1])
    lengths = np.concatenate(lengths_all)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        np.save(tmp / "offsets.npy", offsets)
        flat = np.lib.format.open_memmap(tmp / "flat.npy", mode="w+", dtype=np.float32, shape=(int(offsets[-1]), dim))
        row = 0
        for part in files:
            with np.load(part) as z:
                f = z["flat"]
                flat[row : row + f.shape[0]] = f
                row += f.shape[0]
        flat.flush()
        del flat
        info = {"encoder": {**spec.key(role)}, "role": role}
        _write_meta(tmp, len(texts), int(offsets[-1]), dim, info)
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(parts, ignore_errors=True)
    return RaggedVectors.load(final)
