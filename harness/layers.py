"""Encoder depth as a cost axis: embeddings from the hidden state of layer L, and its query cost.

Post-hoc 2DMSE / Starbucks (Li et al., "2D Matryoshka Sentence Embeddings", 2024; Zhuang et al.,
"Starbucks: Improved Training for 2D Matryoshka Embeddings", 2024). Those papers *train* an
encoder so that every (layer, dimension) sub-network embeds well; the encoders here
(all-MiniLM-L6-v2) were not so trained, so this module takes the closest post-hoc version: the
hidden state after transformer layer L (1..num_layers) of the frozen model, pooled over tokens
(``mean``, masked, as the model's own pooling; or ``cls``) and L2-normalised when the spec asks
(as the standard pipeline does). For the last layer with mean pooling this is exactly the
model's standard sentence-transformers embedding (a test checks it).

* :func:`encode_layers` encodes a text list once — one forward pass per batch with
  ``output_hidden_states=True`` — and caches every layer's embeddings under that layer's own
  :func:`harness.encode.cache_key`, so a layer grid costs one encode. Chunked and resumable like
  :func:`harness.encode.encode_texts`.
* :func:`query_encoding_times` measures what a layer costs at query time: a copy of the model
  truncated to its first L layers encodes the queries one at a time and in batches, one thread,
  the layers interleaved query by query so machine load hits them alike; cached per
  (model, settings, queries). The figures are only comparable within one measurement (ratios).
* A data set of layer L is named ``NAME@L<L>`` (``-cls`` appended for CLS pooling), and its
  identity (fingerprint) carries model, layer and pooling (:mod:`harness.dataset`).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harness.encode import EncoderSpec, cache_key, resolve_model_path, texts_digest
from harness.errors import DataError, VecbudgetError
from harness.io import atomic_path, atomic_save_npy

POOLINGS = ("mean", "cls")
#: ``NAME@L3`` / ``NAME@L3-cls``: a data set's vectors from layer 3 of its encoder
_LAYER_NAME = re.compile(r"^(?P<base>.+)@L(?P<layer>[1-9][0-9]*)(?:-(?P<pooling>[a-z]+))?$")
#: queries timed one at a time, and in batches, per layer (the test queries' first ones)
SINGLE_QUERIES = 100
BATCH_QUERIES = 512
TIMING_VERSION = 1
#: texts per resumable chunk file (each holds every layer): small, so a slow encode keeps its progress
LAYER_CHUNK = 512


def check_layer_options(opts: dict[str, Any], where: str) -> None:
    """Raise DataError for a bad ``layer`` (an integer ≥ 0) or ``pooling`` encoder option."""
    if "layer" in opts:
        v = opts["layer"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DataError(f"{where}: layer must be an integer >= 0 (0: the model's standard embedding), got {v!r}")
    if "pooling" in opts and opts["pooling"] not in POOLINGS:
        raise DataError(f"{where}: pooling must be one of {', '.join(POOLINGS)}, got {opts['pooling']!r}")


def layer_name(name: str, layer: int, pooling: str = "mean") -> str:
    """The data set name of ``name``'s vectors from layer ``layer``: ``NAME@L<layer>[-pooling]``."""
    return f"{name}@L{layer}" + ("" if pooling == "mean" else f"-{pooling}")


def parse_layer_name(spec: str) -> tuple[str, int, str] | None:
    """``"wordnet@L3"`` → ``("wordnet", 3, "mean")``; None when ``spec`` is not of that form."""
    m = _LAYER_NAME.match(spec)
    if m is None:
        return None
    return m["base"], int(m["layer"]), m["pooling"] or "mean"


# --------------------------------------------------------------------------------------------
# the model, layer by layer

_MODELS: dict[tuple[str, bool], tuple[Any, Any]] = {}


def load_layer_model(spec: EncoderSpec) -> tuple[Any, Any]:
    """(tokenizer, transformers model) of ``spec.model`` on the CPU, in eval mode (cached)."""
    key = (spec.model, spec.trust_remote_code)
    if key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise VecbudgetError("layer embeddings need transformers: pip install '.[embed]'") from exc
        hf_logging.disable_progress_bar()
        path = resolve_model_path(spec.model)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
            model = AutoModel.from_pretrained(path, trust_remote_code=spec.trust_remote_code).eval()
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's to fix
            raise VecbudgetError(f"could not load encoder {spec.model!r}: {exc}") from exc
        _MODELS[key] = (tok, model)
    return _MODELS[key]


def num_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def _check_layer(spec: EncoderSpec, model: Any) -> int:
    total = num_layers(model)
    if not 1 <= spec.layer <= total:
        raise DataError(f"encoder {spec.model} has {total} layers; layer {spec.layer} does not exist (use 1..{total})")
    return total


def _pool(hidden: Any, mask: Any, pooling: str, normalize: bool) -> Any:
    import torch

    if pooling == "cls":
        out = hidden[:, 0]
    else:  # masked mean, as sentence-transformers' Pooling(mean)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return torch.nn.functional.normalize(out, p=2, dim=1) if normalize else out


def _tokens(tok: Any, texts: list[str], max_length: int) -> Any:
    return tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def encode_all_layers(texts: list[str], spec: EncoderSpec, *, tok: Any = None, model: Any = None) -> np.ndarray:
    """Pooled embeddings of every layer, (num_layers, len(texts), dim) float32, from one forward
    pass per batch (``texts`` carry their prompt). Within the call texts are sorted by length, as
    sentence-transformers does."""
    import torch

    if tok is None or model is None:
        tok, model = load_layer_model(spec)
    total = num_layers(model)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = None
    with torch.inference_mode():
        for lo in range(0, len(texts), spec.batch_size):
            idx = order[lo : lo + spec.batch_size]
            enc = _tokens(tok, [texts[i] for i in idx], spec.max_length)
            hidden = model(**enc, output_hidden_states=True).hidden_states  # embeddings, layer 1..N
            for layer in range(1, total + 1):
                pooled = _pool(hidden[layer], enc["attention_mask"], spec.pooling, spec.normalize)
                if out is None:
                    out = np.zeros((total, len(texts), pooled.shape[1]), np.float32)
                out[layer - 1, idx] = pooled.float().numpy()
    assert out is not None
    return out


def _layer_files(texts: list[str], spec: EncoderSpec, role: str, cache_dir: Path, total: int) -> dict[int, Path]:
    return {layer: cache_dir / f"emb-{cache_key(texts, replace(spec, layer=layer), role)}.npy"
            for layer in range(1, total + 1)}


def _cached(file: Path, n: int) -> np.ndarray | None:
    if not file.exists():
        return None
    try:
        arr = np.load(file, mmap_mode="r")
        if arr.ndim == 2 and arr.shape[0] == n and arr.dtype == np.float32:
            return arr
    except (ValueError, OSError):
        pass
    return None


def encode_layers(texts: list[str], spec: EncoderSpec, role: str, cache_dir: Path, *, chunk: int = 2048,
                  progress: bool = True, desc: str = "encoding") -> np.ndarray:
    """``spec.layer``'s embeddings of ``texts`` (memory-mapped), encoding every layer at once
    into the cache when they are not there yet."""
    if not spec.layer:
        raise ValueError("encode_layers needs spec.layer >= 1")
    cache_dir.mkdir(parents=True, exist_ok=True)
    hit = _cached(cache_dir / f"emb-{cache_key(texts, spec, role)}.npy", len(texts))
    if hit is not None:  # cached: no model to load
        return hit
    tok, model = load_layer_model(spec)
    total = _check_layer(spec, model)
    files = _layer_files(texts, spec, role, cache_dir, total)
    group = hashlib.sha256("".join(str(files[k].name) for k in sorted(files)).encode()).hexdigest()[:16]
    with open(cache_dir / f".emb-layers-{group}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"{desc}: another process is encoding the same texts; waiting for it", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        hit = _cached(files[spec.layer], len(texts))
        if hit is not None:
            return hit
        parts = cache_dir / f"emb-layers-{group}.parts"
        parts.mkdir(exist_ok=True)
        prompt = spec.prompt(role)
        bar = tqdm(total=len(texts), desc=f"{desc} (all {total} layers)", unit="text", disable=not progress)
        chunk = min(chunk, LAYER_CHUNK)
        chunks = []
        for i, start in enumerate(range(0, len(texts), chunk)):
            part = parts / f"{i:06d}.npy"
            batch = texts[start : start + chunk]
            emb = _cached_part(part, total, len(batch))
            if emb is None:
                emb = encode_all_layers([prompt + t for t in batch], spec, tok=tok, model=model)
                atomic_save_npy(part, emb)
            bar.update(len(batch))
            chunks.append(part)
        bar.close()
        dim = int(np.load(chunks[0], mmap_mode="r").shape[2])
        for layer, final in files.items():
            if _cached(final, len(texts)) is not None:
                continue
            with atomic_path(final, suffix=".npy") as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
                row = 0
                for part in chunks:
                    emb = np.load(part, mmap_mode="r")
                    out[row : row + emb.shape[1]] = emb[layer - 1]
                    row += emb.shape[1]
                out.flush()
                del out
        shutil.rmtree(parts, ignore_errors=True)
    return np.load(files[spec.layer], mmap_mode="r")


def _cached_part(part: Path, total: int, n: int) -> np.ndarray | None:
    if not part.exists():
        return None
    try:
        emb = np.load(part, mmap_mode="r")
        if emb.shape[:2] == (total, n):
            return emb
    except (ValueError, OSError):
        pass
    return None


# --------------------------------------------------------------------------------------------
# query cost per layer


def truncated(model: Any, layers: int) -> Any:
    """A copy of a BERT-style ``model`` that runs only its first ``layers`` transformer layers."""
    import torch

    small = copy.deepcopy(model)
    small.encoder.layer = torch.nn.ModuleList(list(small.encoder.layer)[:layers])
    small.config.num_hidden_layers = layers
    return small.eval()


def _encode_last(tok: Any, model: Any, texts: list[str], spec: EncoderSpec) -> Any:
    enc = _tokens(tok, texts, spec.max_length)
    hidden = model(**enc).last_hidden_state
    return _pool(hidden, enc["attention_mask"], spec.pooling, spec.normalize)


def measure_query_times(spec: EncoderSpec, queries: list[str], *, single: int = SINGLE_QUERIES,
                        batch: int = BATCH_QUERIES, threads: int = 1) -> dict[str, Any]:
    """Query encoding cost of every truncated model (first L layers, L = 1..N), one run.

    Each of the first ``single`` queries is encoded alone by every truncated model in turn
    (rotating which goes first), tokenisation and pooling included; then the first ``batch``
    queries in batches of ``spec.batch_size``, models interleaved batch by batch. ``threads``
    torch threads. Returns per layer the median and mean single-query time and the batch time
    per query, in ms, with the conditions of the measurement.
    """
    import torch

    tok, model = load_layer_model(spec)
    total = num_layers(model)
    models = {layer: truncated(model, layer) for layer in range(1, total)} | {total: model}
    prompt = spec.prompt("query")
    qs = [prompt + q for q in queries]
    singles = qs[:single]
    batched = qs[:batch]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[int, list[float]] = {layer: [] for layer in models}
    batch_s = dict.fromkeys(models, 0.0)
    layers = sorted(models)
    try:
        with torch.inference_mode():
            for m in models.values():  # warm up
                _encode_last(tok, m, singles[:2], spec)
            for i, q in enumerate(singles):
                rot = layers[i % total:] + layers[: i % total]
                for layer in rot:
                    t0 = time.perf_counter()
                    _encode_last(tok, models[layer], [q], spec)
                    times[layer].append((time.perf_counter() - t0) * 1e3)
            for lo in range(0, len(batched), spec.batch_size):
                part = batched[lo : lo + spec.batch_size]
                for layer in layers:
                    t0 = time.perf_counter()
                    _encode_last(tok, models[layer], part, spec)
                    batch_s[layer] += time.perf_counter() - t0
    finally:
        torch.set_num_threads(saved)
    full = float(np.median(times[total]))
    return {
        "version": TIMING_VERSION,
        "model": spec.model, "max_length": spec.max_length, "pooling": spec.pooling,
        "batch_size": spec.batch_size, "threads": threads,
        "single_queries": len(singles), "batch_queries": len(batched), "num_layers": total,
        "per_layer": {str(layer): {
            "single_ms_p50": float(np.median(times[layer])),
            "single_ms_mean": float(np.mean(times[layer])),
            "batch_ms_per_query": batch_s[layer] * 1e3 / len(batched),
            "single_ratio_to_full": float(np.median(times[layer])) / full,
        } for layer in layers},
        "loadavg_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def query_encoding_times(spec: EncoderSpec, queries: list[str], cache_dir: Path, *,
                         progress: bool = True) -> dict[str, Any]:
    """:func:`measure_query_times` of these queries, cached as JSON (measured once for the grid)."""
    single, batch = min(SINGLE_QUERIES, len(queries)), min(BATCH_QUERIES, len(queries))
    what = {"v": TIMING_VERSION, "model": spec.model, "max_length": spec.max_length, "pooling": spec.pooling,
            "normalize": spec.normalize, "prompt": spec.prompt("query"), "batch_size": spec.batch_size,
            "texts": texts_digest(queries[:max(single, batch)]), "single": single, "batch": batch}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    file = cache_dir / f"qtime-{key}.json"
    if file.exists():
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError):
            pass
    if progress:
        print(f"timing query encoding per layer ({single} single queries, {batch} batched, one thread)",
              file=sys.stderr)
    out = measure_query_times(spec, queries, single=single, batch=batch)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(file, suffix=".json") as tmp:
        tmp.write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------------------------
# rows


def encoder_columns(meta: dict[str, Any]) -> dict[str, Any]:
    """Row columns of a prepared data set made from layer L (empty for standard embeddings)."""
    info = meta.get("info") or {}
    enc = info.get("encoder") or {}
    layer = int(enc.get("layer") or 0)
    if not layer:
        return {}
    timing = info.get("query_encoding") or {}
    this = (timing.get("per_layer") or {}).get(str(layer), {})
    out: dict[str, Any] = {"encoder_layer": layer, "encoder_pooling": str(enc.get("pooling", "mean"))}
    if timing:
        out["encoder_layers_total"] = int(timing["num_layers"])
    if this:
        out["query_encode_ms_per_query"] = float(this["single_ms_p50"])
        out["query_encode_batch_ms_per_query"] = float(this["batch_ms_per_query"])
        out["query_encode_ratio_to_full"] = float(this["single_ratio_to_full"])
    return out
