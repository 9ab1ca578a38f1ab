"""Turn a data set name or path into a :class:`~harness.dataset.PreparedDataset`.

A *builder* per manifest ``format`` produces a :class:`~harness.dataset.RawDataset`; the mapping
:data:`BUILDERS` is the only place formats are dispatched, so a new format is one function.

Formats:

* ``beir`` — a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) read with
  beir's ``GenericDataLoader``; downloaded with beir's utility from ``url`` (or the public BEIR
  mirror for ``options.beir_name``) into ``<cache>/beir/`` when ``path`` is absent.
* ``wordnet`` — WordNet definitions vs example sentences; ``wordnet-lemmas`` — the same
  definitions vs the synsets' lemma lists ("dog, domestic dog, Canis familiaris"): short keyword
  queries against passages, the out-of-distribution setting of LeanVec.
* ``hdf5`` — an ann-benchmarks file (``train``/``test``/``neighbors``, ``distance`` attribute →
  metric); from ``path`` or downloaded from ``url`` into ``<cache>/downloads/``. Its shipped
  neighbours are checked against the recomputed ground truth.
* ``vectors`` — base/queries (and optional neighbours, training queries) files in any format
  :func:`harness.formats.read_vectors` reads (``.fvecs/.bvecs/.fbin/.u8bin/.i8bin/.npy/.npz/
  .parquet/.hdf5``), memory-mapped and never loaded whole.
* ``idx`` — MNIST-style IDX files (``*-images-idx3-ubyte[.gz]``), e.g. Debian's
  ``dataset-fashion-mnist``: the same 60,000 + 10,000 vectors as ann-benchmarks'
  fashion-mnist-784-euclidean, offline.
* ``synthetic`` — a Gaussian mixture of given intrinsic dimension (optionally with shifted,
  out-of-distribution queries) or a LIMIT top-k-set data set (:mod:`harness.synthetic`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harness import beir_data, formats, wordnet
from harness.dataset import PreparedDataset, RawDataset, prepare
from harness.encode import EncoderSpec, cache_key, encode_texts
from harness.errors import DataError
from harness.io import atomic_path
from harness.manifest import REPO_ROOT, Manifest, get_manifest, load_manifest, manifests

DEFAULT_DATASET = "wordnet"
ENCODER_KEYS = tuple(EncoderSpec.__dataclass_fields__)
DOWNLOAD_TIMEOUT_S = 60.0


def cache_root() -> Path:
    return Path(os.environ.get("VECBUDGET_CACHE", REPO_ROOT / "datasets" / "cache"))


def _encoder(m: Manifest) -> EncoderSpec:
    return EncoderSpec.from_options(m.encoder, f"data set {m.name}")


# --------------------------------------------------------------------------------------------
# downloads


def download_file(url: str, dest: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True) -> Path:
    """Fetch ``url`` (http, https or file) to ``dest`` unless it is already there.

    The bytes go to a temporary file beside ``dest`` that is renamed into place only when the
    transfer is complete (and as long as the server announced), so a failed or interrupted
    download leaves nothing behind. Failures raise DataError naming the URL, the cause and where
    to put the file by hand.
    """
    if dest.exists():
        return dest
    hint = f"Without network, fetch {url} elsewhere and place it at {dest} (or set 'path' in the manifest)"
    try:
        with atomic_path(dest, suffix=".part") as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                status = getattr(resp, "status", 200)
                if status is not None and status >= 400:
                    raise DataError(f"could not download {url}: HTTP {status}. {hint}")
                total = int(resp.headers.get("Content-Length") or 0)
                bar = tqdm(total=total or None, desc=f"download {dest.name}", unit="B", unit_scale=True,
                           disable=not progress)
                got = 0
                while block := resp.read(1 << 20):
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
                bar.close()
                if total and got != total:
                    raise DataError(f"could not download {url}: got {got} of {total} bytes. {hint}")
    except DataError:
        raise
    except urllib.error.HTTPError as exc:
        raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}. {hint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"could not download {url}: {reason}. {hint}") from exc
    return dest


def _source_file(m: Manifest, progress: bool) -> Path:
    """The manifest's data file: ``path`` if it exists, else ``url`` downloaded into the cache."""
    if m.path is not None and m.path.exists():
        return m.path
    if not m.url:
        where = f"file {m.path} not found" if m.path is not None else "no 'path' given"
        raise DataError(f"data set {m.name}: {where} and no download 'url' in its manifest")
    name = m.url.rstrip("/").rsplit("/", 1)[-1] or f"{m.name}.bin"
    return download_file(m.url, cache_root() / "downloads" / name, progress=progress)


# --------------------------------------------------------------------------------------------
# text collections


@dataclass
class TextCollection:
    """Texts and judgments of a text data set, before encoding."""

    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    train_query_texts: list[str]
    source: str
    extra: dict[str, Any]


@functools.lru_cache(maxsize=2)
def _synsets(root: Path) -> list[wordnet.Synset]:
    return wordnet.load_synsets(root)


def _wordnet_collection(m: Manifest, lemmas: bool) -> TextCollection:
    opts = {"documents": 20000, "queries": 5000, "train_queries": 2000, "seed": 0, **m.options}
    root = wordnet.locate(cache_root())
    sp = wordnet.split(
        _synsets(root),
        documents=opts["documents"],
        queries=opts["queries"],
        train_queries=opts["train_queries"],
        seed=opts["seed"],
    )
    by_id = {s.id: s for s in sp.documents}
    if lemmas:
        # the same query synsets, asked for by their lemma list instead of an example sentence
        def text(sid: str) -> str:
            return ", ".join(by_id[sid].lemmas)

        test = [(f"l-{sid}", text(sid), sid) for _, _, sid in sp.test_queries]
        train = [text(sid) for _, _, sid in sp.train_queries]
    else:
        test = sp.test_queries
        train = [t for _, t, _ in sp.train_queries]
    return TextCollection(
        doc_ids=[s.id for s in sp.documents],
        doc_texts=[s.definition for s in sp.documents],
        query_ids=[q for q, _, _ in test],
        query_texts=[t for _, t, _ in test],
        qrels={q: {sid: 1} for q, _, sid in test},
        train_query_texts=train,
        source=str(root),
        extra={"options": opts},
    )


def _beir_collection(m: Manifest, progress: bool) -> TextCollection:
    folder = m.path
    if folder is None or not (folder / "corpus.jsonl").exists():
        beir_name = m.options.get("beir_name", m.name)
        if not m.url and "beir_name" not in m.options:
            raise DataError(f"data set {m.name}: folder {folder} not found and no download source given")
        folder = beir_data.download(beir_name, cache_root() / "beir", url=m.url, progress=progress)
    col = beir_data.load(folder, split=m.options.get("split", "test"),
                         allow_unknown_qrels=bool(m.options.get("allow_unknown_qrels", False)),
                         progress=progress)
    return TextCollection(col.doc_ids, col.doc_texts, col.query_ids, col.query_texts, col.qrels,
                          col.train_query_texts, str(folder), {})


TEXT_COLLECTIONS: dict[str, Callable[[Manifest, bool], TextCollection]] = {
    "beir": _beir_collection,
    "wordnet": lambda m, progress: _wordnet_collection(m, lemmas=False),
    "wordnet-lemmas": lambda m, progress: _wordnet_collection(m, lemmas=True),
}


def text_collection(m: Manifest, progress: bool = True) -> TextCollection:
    """The texts of a text data set (formats in :data:`TEXT_COLLECTIONS`)."""
    if m.format not in TEXT_COLLECTIONS:
        raise DataError(f"data set {m.name} (format {m.format!r}) is not a text collection; "
                        f"text formats: {', '.join(TEXT_COLLECTIONS)}")
    col = TEXT_COLLECTIONS[m.format](m, progress)
    if m.format != "beir":  # beir_data.load checks BEIR folders itself
        from harness.datawarnings import check_text_collection

        check_text_collection(f"data set {m.name}", col.doc_ids, col.doc_texts, col.query_ids,
                              col.query_texts, col.qrels)
    return col


def _build_text(m: Manifest, progress: bool) -> RawDataset:
    col = text_collection(m, progress)
    spec = _encoder(m)
    cache = cache_root() / "embeddings"
    what = {"wordnet": ("definitions", "examples"), "wordnet-lemmas": ("definitions", "lemmas")}.get(
        m.format, (f"{m.name} corpus", f"{m.name} queries"))
    docs = encode_texts(col.doc_texts, spec, "document", cache, progress=progress, desc=f"encode {what[0]}")
    queries = encode_texts(col.query_texts, spec, "query", cache, progress=progress, desc=f"encode {what[1]}")
    train = (
        encode_texts(col.train_query_texts, spec, "query", cache, progress=progress, desc="encode train queries")
        if col.train_query_texts
        else None
    )
    info = {**m.info(), "source": col.source, "encoder": asdict(spec), **col.extra}
    if spec.layer:  # a layer's vectors: the query cost of that depth, measured for every layer at once
        from harness.layers import query_encoding_times

        info["query_encoding"] = query_encoding_times(spec, col.query_texts, cache, progress=progress)
    return RawDataset(
        name=m.name,
        base=docs,
        queries=queries,
        metric=m.metric,
        train_queries=train,
        doc_ids=col.doc_ids,
        query_ids=col.query_ids,
        qrels=col.qrels,
        info=info,
        encoder_identity={"model": spec.model, "layer": spec.layer, "pooling": spec.pooling} if spec.layer else None,
    )


build_wordnet = _build_text
build_beir = _build_text


# --------------------------------------------------------------------------------------------
# vector files


def _max_queries(m: Manifest) -> int | None:
    v = m.options.get("max_queries")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError(f"data set {m.name}: max_queries must be a positive integer, got {v!r}")
    return v


def build_hdf5(m: Manifest, progress: bool) -> RawDataset:
    file = _source_file(m, progress)
    downloaded = m.path is None or not m.path.exists()
    try:
        data = formats.read_ann_hdf5(file)
    except DataError as exc:
        if downloaded:  # a complete but corrupt download: drop it so the next run fetches again
            file.unlink(missing_ok=True)
            raise DataError(f"{exc} (the downloaded file was removed)") from exc
        raise
    metric = data.metric if m.metric == "auto" else m.metric
    if m.metric not in ("auto", data.metric):
        raise DataError(
            f"{file}: its distance attribute {data.distance!r} means metric {data.metric!r}, but data set "
            f"{m.name} declares metric {m.metric!r}"
        )
    nq = _max_queries(m)
    queries = data.test[:nq] if nq else data.test
    shipped = data.neighbors[: queries.shape[0]] if data.neighbors is not None else None
    return RawDataset(
        name=m.name, base=data.train, queries=queries, metric=metric, shipped_neighbors=shipped,
        info={**m.info(), "source": str(file), "distance": data.distance},
    )


def _file_option(value: Any) -> tuple[str, dict[str, Any]]:
    """An ``[options]`` file entry: ``"name.fvecs"`` or ``{file = "x.h5", key = "train"}``."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("file"), str):
        extra = {k: v for k, v in value.items() if k in ("key", "column")}
        return value["file"], extra
    raise DataError(f"file option must be a file name or a table with 'file', got {value!r}")


def _read_neighbors(file: Path, **kw: Any) -> np.ndarray:
    """Shipped neighbour ids: any vector format (``.ivecs``, ``.ibin``, ``.npy``...) or a big-ann
    ground-truth file (``n, k``, ids, distances)."""
    if file.suffix.lower() in (".bin", ".ibin") and file.exists():
        size = file.stat().st_size
        if size >= 8:
            n, k = (int(v) for v in np.fromfile(file, dtype="<u4", count=2))
            if size == 8 + n * k * 8:
                return formats.read_bigann_groundtruth(file)[0]
    ids = formats.read_vectors(file, check=False, **kw)
    if ids.dtype.kind not in "iu":
        if ids.dtype.kind == "f" and np.array_equal(np.asarray(ids), np.round(ids)):
            return np.asarray(ids).astype(np.int64)
        raise DataError(f"{file}: neighbour ids must be integers, got dtype {ids.dtype}")
    return ids


def build_vectors(m: Manifest, progress: bool) -> RawDataset:
    if m.path is None:
        raise DataError(f"data set {m.name}: 'path' is required for format 'vectors'")
    if not m.path.is_dir():
        raise DataError(f"data set {m.name}: folder {m.path} not found")
    o = {"base": "base.npy", "queries": "queries.npy", **m.options}
    bname, bkw = _file_option(o["base"])
    base_file = m.path / bname
    base = formats.read_vectors(base_file, **bkw)
    d = base.shape[1]
    qname, qkw = _file_option(o["queries"])
    query_file = m.path / qname
    queries = formats.read_vectors(query_file, check=False, **qkw)
    if queries.ndim == 2 and queries.shape[1] != d and queries.shape[0] > 0:
        raise DataError(
            f"{query_file}: dimension {queries.shape[1]} does not match the base dimension {d} ({base_file})"
        )
    formats.validate_vectors(queries, str(query_file), d)
    nq = _max_queries(m)
    if nq:
        queries = queries[:nq]
    train = None
    if "train_queries" in o:
        tname, tkw = _file_option(o["train_queries"])
        train = formats.read_vectors(m.path / tname, dim=d, **tkw)
    shipped = None
    if "neighbors" in o:
        nname, nkw = _file_option(o["neighbors"])
        shipped = _read_neighbors(m.path / nname, **nkw)
        if shipped.shape[0] < queries.shape[0]:
            raise DataError(f"{m.path / nname}: {shipped.shape[0]} rows of neighbours for {queries.shape[0]} queries")
        shipped = shipped[: queries.shape[0]]
    return RawDataset(
        name=m.name, base=base, queries=queries, metric=m.metric, train_queries=train,
        shipped_neighbors=shipped, info={**m.info(), "base_file": str(base_file), "base_dtype": str(base.dtype)},
    )


IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(file: Path) -> np.ndarray:
    """An MNIST-style IDX file (optionally gzipped) as ``(n, prod(other dims))``."""
    if not file.exists():
        raise DataError(f"{file}: file not found")
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{file}: corrupt or truncated ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{file}: not an IDX file (bad magic number)")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    head = 4 + 4 * ndim
    if ndim < 1 or len(raw) < head:
        raise DataError(f"{file}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    if len(raw) - head != count * dtype.itemsize:
        raise DataError(
            f"{file}: truncated or corrupt — header declares shape {dims} ({count * dtype.itemsize} bytes) "
            f"but {len(raw) - head} bytes follow it"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=head)
    return arr.reshape(dims[0], -1).astype(dtype.newbyteorder("="))


def build_idx(m: Manifest, progress: bool) -> RawDataset:
    if m.path is None or not m.path.is_dir():
        raise DataError(
            f"data set {m.name}: folder {m.path} not found (Debian: apt-get install dataset-fashion-mnist)"
        )
    o = {"base": "train-images-idx3-ubyte.gz", "queries": "t10k-images-idx3-ubyte.gz", **m.options}
    base = read_idx(m.path / o["base"])
    queries = read_idx(m.path / o["queries"])
    if queries.shape[1] != base.shape[1]:
        raise DataError(f"{m.path / o['queries']}: dimension {queries.shape[1]} does not match the base "
                        f"dimension {base.shape[1]}")
    nq = _max_queries(m)
    return RawDataset(name=m.name, base=base, queries=queries[:nq] if nq else queries, metric=m.metric,
                      info={**m.info(), "source": str(m.path)})


# --------------------------------------------------------------------------------------------
# synthetic


GAUSSIAN_DEFAULTS = {"n": 20000, "nq": 1000, "train_queries": 0, "dim": 128, "intrinsic_dim": 16,
                     "clusters": 10, "seed": 0, "spread": 4.0, "noise": 0.01, "query_shift": 0.0}
LIMIT_DEFAULTS = {"n_docs": 46, "k": 2, "dim": 32, "seed": 0, "steps": 2000}


def _synthetic_cache(kind: str, opts: dict[str, Any], make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    key = hashlib.sha256(json.dumps({"kind": kind, **opts}, sort_keys=True).encode()).hexdigest()[:16]
    file = cache_root() / "synthetic" / f"{kind}-{key}.npz"
    if file.exists():
        try:
            with np.load(file) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            file.unlink(missing_ok=True)
    arrays = make()
    with atomic_path(file, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return arrays


def build_synthetic(m: Manifest, progress: bool) -> RawDataset:
    from harness import synthetic

    kind = m.options.get("kind", "gaussian")
    if kind == "fitted":  # fitted to real embeddings (issue 13): its own module
        from harness import fitted_synthetic

        return fitted_synthetic.build(m, progress)
    given = {k: v for k, v in m.options.items() if k != "kind"}
    if kind == "gaussian":
        defaults = GAUSSIAN_DEFAULTS
    elif kind == "limit":
        defaults = LIMIT_DEFAULTS
    else:
        raise DataError(f"data set {m.name}: unknown synthetic kind {kind!r}; use 'gaussian', 'limit' or 'fitted'")
    unknown = set(given) - set(defaults)
    if unknown:
        raise DataError(f"data set {m.name}: unknown {kind} option(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(defaults)}")
    o = {**defaults, **given}
    try:
        if kind == "gaussian":
            def make() -> dict[str, np.ndarray]:
                base, q = synthetic.gaussian_mixture(
                    o["n"], o["nq"] + o["train_queries"], o["dim"], o["intrinsic_dim"], o["clusters"], o["seed"],
                    spread=o["spread"], noise=o["noise"], query_shift=o["query_shift"])
                return {"base": base, "queries": q}

            arr = _synthetic_cache(kind, o, make)
            queries, train = arr["queries"][: o["nq"]], arr["queries"][o["nq"]:]
            return RawDataset(name=m.name, base=arr["base"], queries=queries, metric=m.metric,
                              train_queries=train if len(train) else None, info={**m.info(), "options": o})

        def make_limit() -> dict[str, np.ndarray]:
            ds = synthetic.limit_dataset(o["n_docs"], o["k"], o["dim"], o["seed"], steps=o["steps"])
            return {"docs": ds.docs, "queries": ds.queries, "qrels": ds.qrels,
                    "solved": np.array(ds.solved_fraction)}

        arr = _synthetic_cache(kind, o, make_limit)
    except ValueError as exc:
        raise DataError(f"data set {m.name}: {exc}") from exc
    qrels = arr["qrels"]
    return RawDataset(
        name=m.name, base=arr["docs"], queries=arr["queries"], metric=m.metric,
        doc_ids=[f"d{j}" for j in range(o["n_docs"])], query_ids=[f"q{i}" for i in range(len(qrels))],
        qrels={f"q{i}": {f"d{j}": 1 for j in row} for i, row in enumerate(qrels.tolist())},
        info={**m.info(), "options": o, "free_embedding_solved_fraction": float(arr["solved"])},
    )


BUILDERS: dict[str, Callable[[Manifest, bool], RawDataset]] = {
    "wordnet": _build_text,
    "wordnet-lemmas": _build_text,
    "beir": _build_text,
    "hdf5": build_hdf5,
    "vectors": build_vectors,
    "idx": build_idx,
    "synthetic": build_synthetic,
}


# --------------------------------------------------------------------------------------------
# name → manifest → prepared data set


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in formats.SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _adhoc(path: Path) -> Manifest:
    """A manifest for a file or folder given on the command line."""
    path = path.resolve()
    if path.is_file() and path.suffix == ".toml":
        return load_manifest(path)
    if path.is_file() and path.suffix.lower() in formats.HDF5_SUFFIXES:
        return Manifest(name=path.stem, format="hdf5", metric="auto", path=path)
    if path.is_file():
        raise DataError(f"{path}: a data set file must be an ann-benchmarks .hdf5 or a manifest .toml; "
                        f"for other formats give a folder with base.* and queries.* files")
    if (path / "corpus.jsonl").exists():
        return Manifest(name=path.name, format="beir", metric="cosine", path=path,
                        encoder={"model": "all-MiniLM-L6-v2"})
    if list(path.glob("*-images-idx3-ubyte*")):
        return Manifest(name=path.name, format="idx", metric="l2", path=path)
    base = _find(path, ("base",))
    if base is not None:
        queries = _find(path, ("queries", "query"))
        if queries is None:
            raise DataError(f"{path}: has {base.name} but no queries file (queries.<{'|'.join(formats.SUFFIXES)}>)")
        opts: dict[str, Any] = {"base": base.name, "queries": queries.name}
        nb = _find(path, ("neighbors", "groundtruth", "gt"))
        if nb is None and (path / "groundtruth.bin").is_file():
            nb = path / "groundtruth.bin"
        if nb is not None:
            opts["neighbors"] = nb.name
        train = _find(path, ("train_queries", "learn"))
        if train is not None:
            opts["train_queries"] = train.name
        return Manifest(name=path.name, format="vectors", metric="l2", path=path, options=opts)
    raise DataError(f"{path}: not a known data set name and not a folder with corpus.jsonl, base.* "
                    f"and queries.* vector files, or IDX files")


def manifest_for(spec: str, overrides: dict[str, Any] | None = None) -> Manifest:
    """A manifest for a registered name, a manifest ``.toml``, an ann-benchmarks ``.hdf5`` file,
    or an ad-hoc BEIR / vector-file / IDX folder, with ``overrides`` applied.

    Overrides: ``metric``; the encoder fields (``model``, ``max_length``, ``batch_size``,
    ``normalize``, ``query_prompt``, ``document_prompt``, ``trust_remote_code``, ``layer``,
    ``pooling``; a ``layer`` names the data set ``NAME@L<layer>``, and ``-d NAME@L3`` is the same
    as ``layer=3``: :mod:`harness.layers`); anything else
    goes to the builder's options. A new ``model`` drops the manifest's prompts (they belong to
    its model) unless prompts are overridden too, so the prompt registry supplies the new
    model's defaults.
    """
    path = Path(spec)
    from harness.layers import layer_name, parse_layer_name

    if (layered := parse_layer_name(spec)) and layered[0] in manifests() and spec not in manifests():
        spec = layered[0]  # NAME@L3: NAME's vectors from encoder layer 3
        overrides = {"layer": layered[1], "pooling": layered[2], **(overrides or {})}
        path = Path(spec)
    if spec in manifests() or not (path.exists() or "/" in spec or spec.endswith((".toml", ".hdf5", ".h5"))):
        m = get_manifest(spec)
    elif not path.exists():
        raise DataError(f"{spec}: no such file or folder")
    else:
        m = _adhoc(path)
    over = dict(overrides or {})
    if "metric" in over:
        m.metric = over.pop("metric")
    enc = {k: over.pop(k) for k in list(over) if k in ENCODER_KEYS}
    enc = {k: v for k, v in enc.items() if v is not None}
    if enc and m.format not in TEXT_COLLECTIONS:
        raise DataError(f"data set {m.name} (format {m.format!r}) holds vectors, not texts: encoder options "
                        f"({', '.join(sorted(enc))}) apply only to text data sets ({', '.join(TEXT_COLLECTIONS)})")
    if enc:
        encoder = dict(m.encoder)
        if "model" in enc and enc["model"] != encoder.get("model"):
            encoder.pop("query_prompt", None)
            encoder.pop("document_prompt", None)
            encoder.pop("trust_remote_code", None)
            m.dim = None  # another model, another dimension
        m.encoder = {**encoder, **enc}
        if m.encoder.get("layer"):  # another depth, another data set: named NAME@L<layer>
            m.name = layer_name(m.name, int(m.encoder["layer"]), str(m.encoder.get("pooling", "mean")))
    if over:
        m.options = {**m.options, **over}
    return m


def build_raw(m: Manifest, progress: bool = True) -> RawDataset:
    if m.format not in BUILDERS:
        raise DataError(f"data set {m.name}: unknown format {m.format!r}; known: {', '.join(sorted(BUILDERS))}")
    raw = BUILDERS[m.format](m, progress)
    if m.dim is not None and raw.base.shape[1] != m.dim:
        raise DataError(f"data set {m.name}: vectors have {raw.base.shape[1]} dimensions but its manifest "
                        f"({m.source_file}) declares dim = {m.dim}")
    return raw


def load_dataset(spec: str = DEFAULT_DATASET, *, overrides: dict[str, Any] | None = None,
                 progress: bool = True) -> PreparedDataset:
    m = manifest_for(spec, overrides)
    t0 = time.perf_counter()
    raw = build_raw(m, progress)
    raw.info["phases"] = {"encode_s": time.perf_counter() - t0}  # kept in meta.json by prepare (issue 13)
    if m.options.get("filters"):  # the filter spec is part of a filtered data set's identity
        from harness.filters import filter_spec

        raw.track_identity = {"filters": filter_spec(m.options)}
    ds = prepare(raw, cache_root(), progress=progress)
    if m.options.get("filters"):  # filtered search: attributes, filters, filtered ground truth
        from harness.filters import prepare_filters

        prepare_filters(m, ds, progress=progress)
    return ds


def prepare_multivector(spec: str, *, overrides: dict[str, Any] | None = None, progress: bool = True,
                        ds: PreparedDataset | None = None) -> PreparedDataset:
    """Token-level embeddings of a text data set's documents and queries, stored ragged in the
    prepared folder (``multivector/``, see :meth:`PreparedDataset.multivector`)."""
    from harness.multivector import encode_tokens

    m = manifest_for(spec, overrides)
    shipped = m.path / "tokens" if m.path is not None and m.format == "vectors" else None
    if shipped is not None and (shipped / "document" / "meta.json").exists():
        return _shipped_tokens(m, shipped, ds or prepare(build_raw(m, progress), cache_root(), progress=progress))
    if m.format not in TEXT_COLLECTIONS:
        raise DataError(f"data set {m.name}: multi-vector data need a text collection "
                        f"(formats {', '.join(TEXT_COLLECTIONS)}) or a vectors folder with tokens/document and "
                        f"tokens/query ragged folders, not format {m.format!r}")
    ds = ds or prepare(build_raw(m, progress), cache_root(), progress=progress)
    col = text_collection(m, progress)
    if len(col.doc_texts) != ds.n:
        raise DataError(f"data set {m.name}: {len(col.doc_texts)} texts for {ds.n} prepared vectors")
    spec_ = _encoder(m)
    folder = ds.path / ds.MULTIVECTOR_DIR
    index: dict[str, str] = {}
    for role, texts in (("document", col.doc_texts), ("query", col.query_texts)):
        encode_tokens(texts, spec_, folder, role=role, progress=progress, desc=f"encode {role} tokens")
        index[role] = f"tok-{cache_key(texts, spec_, role)}"
    with atomic_path(folder / "index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    return ds


def _shipped_tokens(m: Manifest, folder: Path, ds: PreparedDataset) -> PreparedDataset:
    """Token vectors shipped with a vectors folder (``tokens/document``, ``tokens/query``, each a
    :class:`harness.multivector.RaggedVectors` folder) copied into the prepared folder."""
    from harness.multivector import RaggedVectors

    index: dict[str, str] = {}
    for role, count in (("document", ds.n), ("query", ds.nq)):
        rv = RaggedVectors.load(folder / role)
        if len(rv) != count:
            raise DataError(f"data set {m.name}: {folder / role} holds {len(rv)} texts for {count} {role} vectors")
        # content-keyed, so ground truth cached for other tokens is never reused
        from harness.dataset import fingerprint

        key = fingerprint("ip", rv.flat, extra=hashlib.sha256(np.asarray(rv.offsets, np.int64).tobytes()).hexdigest())
        name = f"tok-shipped-{role}-{key}"
        if not (ds.path / ds.MULTIVECTOR_DIR / name / "meta.json").exists():
            rv.save(ds.path / ds.MULTIVECTOR_DIR / name)
        index[role] = name
    with atomic_path(ds.path / ds.MULTIVECTOR_DIR / "index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=1))
    return ds


def source_status(m: Manifest) -> str:
    """Where a data set's data are: ``local``, ``downloaded``, ``download`` (needs network),
    ``generated`` or ``missing``."""
    if m.format == "synthetic":
        return "generated"
    if m.format in ("wordnet", "wordnet-lemmas"):
        return "local" if wordnet.DEBIAN_DIR.joinpath("data.noun").exists() else (
            "downloaded" if (cache_root() / "wordnet-3.0").exists() else "download")
    if m.path is not None and m.path.exists():
        return "local"
    if m.format == "beir":
        name = m.options.get("beir_name", m.name)
        if (cache_root() / "beir" / name / "corpus.jsonl").exists():
            return "downloaded"
    elif m.url:
        name = m.url.rstrip("/").rsplit("/", 1)[-1]
        if (cache_root() / "downloads" / name).exists():
            return "downloaded"
    return "download" if m.url or "beir_name" in m.options else "missing"
