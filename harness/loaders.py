"""Turn a data set name or path into a :class:`~harness.dataset.PreparedDataset`.

A *builder* per manifest ``format`` produces a :class:`~harness.dataset.RawDataset`; the mapping
:data:`BUILDERS` is the only place formats are dispatched, so a new format is one function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness import beir_data, wordnet
from harness.dataset import PreparedDataset, RawDataset, prepare
from harness.encode import EncoderSpec, encode_texts
from harness.errors import DataError
from harness.manifest import MANIFEST_DIR, REPO_ROOT, Manifest, get_manifest, manifests

DEFAULT_DATASET = "wordnet"


def cache_root() -> Path:
    return Path(os.environ.get("VECBUDGET_CACHE", REPO_ROOT / "datasets" / "cache"))


def _encoder(m: Manifest) -> EncoderSpec:
    fields = EncoderSpec.__dataclass_fields__
    unknown = set(m.encoder) - set(fields)
    if unknown:
        raise DataError(f"data set {m.name}: unknown encoder option(s) {', '.join(sorted(unknown))}")
    return EncoderSpec(**m.encoder)


def build_wordnet(m: Manifest, progress: bool) -> RawDataset:
    opts = {"documents": 20000, "queries": 1000, "train_queries": 2000, "seed": 0, **m.options}
    root = wordnet.locate(cache_root())
    sp = wordnet.split(
        wordnet.load_synsets(root),
        documents=opts["documents"],
        queries=opts["queries"],
        train_queries=opts["train_queries"],
        seed=opts["seed"],
    )
    spec = _encoder(m)
    cache = cache_root() / "embeddings"
    docs = encode_texts([s.definition for s in sp.documents], spec, "document", cache, progress=progress, desc="encode definitions")
    queries = encode_texts([t for _, t, _ in sp.test_queries], spec, "query", cache, progress=progress, desc="encode examples")
    train = encode_texts([t for _, t, _ in sp.train_queries], spec, "query", cache, progress=progress, desc="encode train examples")
    return RawDataset(
        name=m.name,
        base=docs,
        queries=queries,
        metric=m.metric,
        train_queries=train,
        doc_ids=[s.id for s in sp.documents],
        query_ids=[q for q, _, _ in sp.test_queries],
        qrels={q: {sid: 1} for q, _, sid in sp.test_queries},
        info={**m.info(), "source": str(root), "options": opts},
    )


def build_beir(m: Manifest, progress: bool) -> RawDataset:
    folder = m.path
    if folder is None or not folder.exists():
        if not m.url and not m.options.get("beir_name"):
            raise DataError(f"data set {m.name}: folder {folder} not found and no download source given")
        folder = beir_data.download(m.options.get("beir_name", m.name), cache_root() / "beir")
    col = beir_data.load(folder, split=m.options.get("split", "test"))
    spec = _encoder(m)
    cache = cache_root() / "embeddings"
    docs = encode_texts(col.doc_texts, spec, "document", cache, progress=progress, desc=f"encode {m.name} corpus")
    queries = encode_texts(col.query_texts, spec, "query", cache, progress=progress, desc=f"encode {m.name} queries")
    train = (
        encode_texts(col.train_query_texts, spec, "query", cache, progress=progress, desc=f"encode {m.name} train queries")
        if col.train_query_texts
        else None
    )
    return RawDataset(
        name=m.name,
        base=docs,
        queries=queries,
        metric=m.metric,
        train_queries=train,
        doc_ids=col.doc_ids,
        query_ids=col.query_ids,
        qrels=col.qrels,
        info={**m.info(), "source": str(folder)},
    )


def _read_array(file: Path) -> np.ndarray:
    if not file.exists():
        raise DataError(f"file not found: {file}")
    try:
        return np.load(file, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{file}: not a readable .npy file ({exc})") from exc


def build_vectors(m: Manifest, progress: bool) -> RawDataset:
    if m.path is None:
        raise DataError(f"data set {m.name}: 'path' is required for format 'vectors'")
    o = {"base": "base.npy", "queries": "queries.npy", **m.options}
    base = np.asarray(_read_array(m.path / o["base"]), dtype=np.float32)
    queries = np.asarray(_read_array(m.path / o["queries"]), dtype=np.float32)
    train = np.asarray(_read_array(m.path / o["train_queries"]), dtype=np.float32) if "train_queries" in o else None
    shipped = np.asarray(_read_array(m.path / o["neighbors"])) if "neighbors" in o else None
    return RawDataset(
        name=m.name, base=base, queries=queries, metric=m.metric, train_queries=train,
        shipped_neighbors=shipped, info=m.info(),
    )


BUILDERS: dict[str, Callable[[Manifest, bool], RawDataset]] = {
    "wordnet": build_wordnet,
    "beir": build_beir,
    "vectors": build_vectors,
}


def manifest_for(spec: str, overrides: dict[str, Any] | None = None) -> Manifest:
    """A manifest for a registered name, or an ad-hoc one for a BEIR or .npy folder path."""
    path = Path(spec)
    if spec in manifests(MANIFEST_DIR) or not (path.exists() or "/" in spec):
        m = get_manifest(spec)
    elif (path / "corpus.jsonl").exists():
        m = Manifest(name=path.resolve().name, format="beir", metric="cosine", path=path.resolve(),
                     encoder={"model": "all-MiniLM-L6-v2"})
    elif (path / "base.npy").exists():
        opts = {"neighbors": "neighbors.npy"} if (path / "neighbors.npy").exists() else {}
        m = Manifest(name=path.resolve().name, format="vectors", metric="l2", path=path.resolve(), options=opts)
    else:
        raise DataError(f"{spec}: not a known data set name and not a folder with corpus.jsonl or base.npy")
    for key, value in (overrides or {}).items():
        if key == "metric":
            m.metric = value
        elif key == "model":
            m.encoder = {**m.encoder, "model": value}
        else:
            m.options = {**m.options, key: value}
    return m


def load_dataset(spec: str = DEFAULT_DATASET, *, overrides: dict[str, Any] | None = None,
                 progress: bool = True) -> PreparedDataset:
    m = manifest_for(spec, overrides)
    if m.format not in BUILDERS:
        raise DataError(f"data set {m.name}: unknown format {m.format!r}; known: {', '.join(sorted(BUILDERS))}")
    return prepare(BUILDERS[m.format](m, progress), cache_root(), progress=progress)
