"""Filtered search data: per-document attributes, per-query filters, filtered exact ground truth.

A data set whose manifest has ``options.filters`` gets a ``filters/`` part in its prepared folder
(:func:`prepare_filters`, called by :func:`harness.loaders.load_dataset`), read by the filtered
track (:mod:`harness.tracks.filtered`) through :class:`FilterSet`.

Attributes (``options.filters``):

* ``"wordnet"``: from WordNet's own data lines, per document (synset): part of speech (``pos``,
  4 values: noun, verb, adj, adv; adjective satellites count as adj), lexicographer file
  (``lexfile``, 45 values such as ``noun.animal``) and definition length in words (``deflen``,
  ordered). A query's own attributes are those of the synset it belongs to (its judged document).
* a file name in the data folder: an ``.npz`` with ``cat_<name>_doc`` / ``cat_<name>_query``
  (integer categories) and ``ord_<name>_doc`` / ``ord_<name>_query`` (ordered values) arrays.

Filter families (each query carries one filter per family; the family is a search parameter):

* one per categorical attribute (``pos``, ``lexfile``): the documents sharing the query's value;
* ``range``: the first ordered attribute within ``range_width`` (default 1) of the query's value
  (WordNet: definitions within ±1 word of the length of the query's own synset's definition);
* ``<cat>&range`` for each categorical attribute: the conjunction of the two;
* ``sel=<s>`` for each of ``selectivities`` (default 0.001, 0.01, 0.1, 0.5): **random id
  subsets**, uncorrelated with the queries: ``random_groups`` (default 16) subsets of
  round(s·n) ids each, drawn with a fixed seed; query i carries subset i mod ``random_groups``.

The real-attribute filters always let the query's own document through; a random subset holds it
with probability s. Relevance judgments: a relevant document that fails the filter cannot be
retrieved, so nDCG@10 and Recall@100 are computed on what the filter allows (judgments that fail
the filter are dropped; a query left with no retrievable relevant document is left out of the
mean, and ``filter_judged_queries`` counts those kept).

Ground truth: exact top-``GT_K`` among the ids passing each query's filter, per group of queries
sharing a filter (:func:`filtered_ground_truth`, exact_knn over the passing rows, chunked),
padded with id -1 where fewer pass. The filtered track evaluates the first ``filter_queries``
(default 500) queries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from harness.dataset import GT_K, PreparedDataset
from harness.errors import DataError
from harness.groundtruth import exact_knn

FILTERS_DIR = "filters"
#: bumped when the meaning of a family changes (the folder is then rebuilt)
FILTERS_VERSION = 1
DEFAULT_SPEC: dict[str, Any] = {"filter_queries": 500, "range_width": 1,
                                "selectivities": [0.001, 0.01, 0.1, 0.5], "random_groups": 16, "seed": 0}
#: the filter families of a data set with two categorical attributes, an ordered one and the
#: default selectivities (WordNet's): the ``filter`` search grid of the filtered methods
FAMILIES = ["pos", "lexfile", "range", "pos&range", "lexfile&range", "sel=0.001", "sel=0.01", "sel=0.1", "sel=0.5"]
#: selectivity bands of the per-band leaderboards: [low, high) fractions of the base
BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.005), (0.005, 0.05), (0.05, 0.25), (0.25, 1.01))

POS_NAMES = ("noun", "verb", "adj", "adv")
#: WordNet 3.0's lexicographer files, by number (lexnames(5WN))
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)


def band_of(selectivity: float) -> str:
    """The label of the selectivity band holding ``selectivity``."""
    for lo, hi in BANDS:
        if lo <= selectivity < hi:
            return band_label(lo, hi)
    return band_label(*BANDS[-1])


def band_label(lo: float, hi: float) -> str:
    return f"{lo:.1%}–{min(hi, 1.0):.0%}" if hi >= 0.25 else f"{lo:.1%}–{hi:.1%}"


# --------------------------------------------------------------------------------------------
# attributes


@dataclass
class Attributes:
    """Per-document and per-query attribute values (categorical ints, ordered floats)."""

    cats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    ords: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def wordnet_attributes(doc_ids: list[str], query_ids: list[str], qrels: dict[str, dict[str, int]],
                       synsets: list[Any]) -> Attributes:
    """POS, lexicographer file and definition length of each document and of each query's synset."""
    by_id = {s.id: s for s in synsets}
    missing = [d for d in doc_ids if d not in by_id]
    if missing:
        raise DataError(f"filters: {len(missing)} document id(s) are not WordNet synsets, e.g. {missing[0]!r}")
    pos = np.array(["nvar".index(d[0]) for d in doc_ids], np.int32)
    lex = np.array([by_id[d].lexfile for d in doc_ids], np.int32)
    if (lex < 0).any():
        raise DataError("filters: WordNet synsets without a lexicographer file (parsed by another reader?)")
    length = np.array([len(by_id[d].definition.split()) for d in doc_ids], np.float64)
    row = {d: i for i, d in enumerate(doc_ids)}
    own = np.empty(len(query_ids), np.int64)
    for i, q in enumerate(query_ids):
        rel = [d for d, r in (qrels.get(q) or {}).items() if r > 0 and d in row]
        if not rel:
            raise DataError(f"filters: query {q!r} has no judged document to take its attributes from")
        own[i] = row[rel[0]]
    return Attributes(cats={"pos": (pos, pos[own]), "lexfile": (lex, lex[own])},
                      ords={"deflen": (length, length[own])})


def file_attributes(file: Path, n: int, nq: int) -> Attributes:
    """Attributes from an ``.npz`` (see the module docstring), checked against n and nq."""
    try:
        with np.load(file) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"filters: attribute file {file} is unreadable ({exc})") from exc
    out = Attributes()
    for key in arrays:  # in the file's order (families follow it)
        parts = key.split("_")
        if len(parts) < 3 or parts[0] not in ("cat", "ord") or parts[-1] != "doc":
            continue
        name = "_".join(parts[1:-1])
        qkey = f"{parts[0]}_{name}_query"
        if qkey not in arrays:
            raise DataError(f"filters: {file} has {key} but no {qkey}")
        doc, query = arrays[key], arrays[qkey]
        if doc.shape != (n,) or query.shape[0] < nq:
            raise DataError(f"filters: {file}: {key} has shape {doc.shape} for {n} documents and {qkey} "
                            f"{query.shape} for {nq} queries")
        if parts[0] == "cat":
            out.cats[name] = (doc.astype(np.int64), query[:nq].astype(np.int64))
        else:
            out.ords[name] = (doc.astype(np.float64), query[:nq].astype(np.float64))
    if not out.cats and not out.ords:
        raise DataError(f"filters: {file} holds no cat_<name>_doc / ord_<name>_doc arrays")
    return out


# --------------------------------------------------------------------------------------------
# families


def _dedupe(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a (Q, n) boolean matrix: (groups (Q,), distinct masks (G, n))."""
    packed = np.packbits(masks, axis=1)
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups numbered by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)].astype(np.int32), masks[first[order]]


def make_families(attrs: Attributes, n: int, nq: int, spec: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Every filter family: name -> (group per query (nq,), distinct masks (G, n), description)."""
    out: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    cat_masks: dict[str, np.ndarray] = {}
    for name, (doc, query) in attrs.cats.items():
        values, inverse = np.unique(query, return_inverse=True)
        masks = doc[None, :] == values[:, None]
        out[name] = (inverse.astype(np.int32), masks, f"documents with the query's own {name}")
        cat_masks[name] = masks[inverse]
    if attrs.ords:
        oname, (doc, query) = next(iter(attrs.ords.items()))
        w = float(spec["range_width"])
        rmask = (doc[None, :] >= query[:, None] - w) & (doc[None, :] <= query[:, None] + w)
        groups, masks = _dedupe(rmask)
        out["range"] = (groups, masks, f"{oname} within ±{w:g} of the query's own")
        for cname, cm in cat_masks.items():
            groups, masks = _dedupe(cm & rmask)
            out[f"{cname}&range"] = (groups, masks, f"{cname} AND range")
    for s in spec["selectivities"]:
        s = float(s)
        size = max(1, int(round(s * n)))
        g = int(spec["random_groups"])
        masks = np.zeros((g, n), bool)
        for j in range(g):
            rng = np.random.default_rng([int(spec["seed"]), j, int(round(s * 1e6))])
            masks[j, rng.choice(n, size, replace=False)] = True
        out[f"sel={s:g}"] = ((np.arange(nq) % g).astype(np.int32), masks,
                             f"random id subsets of {size} ids ({g} subsets, query i carries subset i mod {g})")
    return out


def filtered_ground_truth(base: np.ndarray, queries: np.ndarray, groups: np.ndarray, masks: np.ndarray,
                          k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among the ids each query's filter lets through, in faiss's convention.

    ``groups[i]`` names the row of ``masks`` that query i carries. Rows with fewer than k passing
    ids are padded with id -1 and distance +inf (l2) / -inf (ip). Returns (dist (nq, k), ids).
    """
    nq = queries.shape[0]
    fill = np.inf if metric == "l2" else -np.inf
    dist = np.full((nq, k), fill, np.float32)
    ids = np.full((nq, k), -1, np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        allowed = np.flatnonzero(masks[g])
        if allowed.size == 0:
            continue
        kk = min(k, allowed.size)
        sub = np.ascontiguousarray(base[allowed], dtype=np.float32)
        d, i = exact_knn(sub, np.ascontiguousarray(queries[rows], dtype=np.float32), kk, metric)
        dist[rows, :kk] = d
        ids[rows, :kk] = np.where(i >= 0, allowed[np.maximum(i, 0)], -1)
    return dist, ids


# --------------------------------------------------------------------------------------------
# the prepared filters/ folder


def filter_spec(options: dict[str, Any]) -> dict[str, Any]:
    """Everything in a manifest's options that decides the filters (part of the data set's identity)."""
    spec = {**DEFAULT_SPEC, **{k: options[k] for k in DEFAULT_SPEC if k in options}}
    spec["source"] = str(options["filters"])
    spec["version"] = FILTERS_VERSION
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def prepare_filters(m: Any, ds: PreparedDataset, *, progress: bool = True) -> Path:
    """Write (once) the ``filters/`` part of ``ds`` for manifest ``m`` (``options.filters``).

    Built in a temporary folder and renamed into place; a folder of another spec is replaced.
    """
    spec = filter_spec(m.options)
    folder = ds.path / FILTERS_DIR
    meta_file = folder / "meta.json"
    if meta_file.exists():
        try:
            if json.loads(meta_file.read_text()).get("spec_hash") == spec_hash(spec):
                return folder
        except (OSError, ValueError):
            pass
    if not ds.has_qrels and spec["source"] == "wordnet":
        raise DataError(f"data set {ds.name}: WordNet filters need the judgments (each query's synset)")
    nq = min(int(spec["filter_queries"]), ds.nq)
    if spec["source"] == "wordnet":
        from harness import wordnet
        from harness.loaders import cache_root

        synsets = wordnet.load_synsets(wordnet.locate(cache_root()))
        attrs = wordnet_attributes(ds.doc_ids, ds.query_ids[:nq], ds.qrels, synsets)
        labels = {"pos": list(POS_NAMES), "lexfile": list(LEXNAMES)}
    else:
        if m.path is None:
            raise DataError(f"data set {ds.name}: options.filters = {spec['source']!r} needs the data folder ('path')")
        attrs = file_attributes(Path(m.path) / spec["source"], ds.n, nq)
        labels = {}
    families = make_families(attrs, ds.n, nq, spec)
    base = ds.base
    queries = ds.queries[:nq]
    tmp = Path(tempfile.mkdtemp(prefix=".filters-", dir=ds.path))
    try:
        fam_meta = {}
        for i, (name, (groups, masks, desc)) in enumerate(families.items()):
            stem = f"f{i:02d}"
            dist, ids = filtered_ground_truth(base, queries, groups, masks, GT_K, ds.method_metric)
            np.save(tmp / f"{stem}_groups.npy", groups)
            np.save(tmp / f"{stem}_masks.npy", np.packbits(masks, axis=1, bitorder="little"))
            np.save(tmp / f"{stem}_gt_ids.npy", ids)
            np.save(tmp / f"{stem}_gt_dist.npy", dist)
            passing = masks.sum(axis=1)[groups]
            fam_meta[name] = {"stem": stem, "description": desc, "groups": int(masks.shape[0]),
                              "selectivity": float(passing.mean() / ds.n),
                              "selectivity_min": float(passing.min() / ds.n),
                              "selectivity_max": float(passing.max() / ds.n)}
            if progress:
                print(f"filters {name}: {masks.shape[0]} distinct filter(s), mean selectivity "
                      f"{fam_meta[name]['selectivity']:.4f}", flush=True)
        np.savez(tmp / "attributes.npz", **{f"cat_{k}_doc": v[0] for k, v in attrs.cats.items()},
                 **{f"ord_{k}_doc": v[0] for k, v in attrs.ords.items()})
        meta = {"spec": spec, "spec_hash": spec_hash(spec), "nq": nq, "n": ds.n, "gt_k": GT_K,
                "families": fam_meta, "labels": labels, "dataset_fingerprint": ds.fingerprint}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        old = ds.path / f".filters-old-{spec_hash(spec)}"
        if folder.exists():
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:  # written concurrently by another process: keep theirs
            pass
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def has_filters(ds: PreparedDataset) -> bool:
    return (Path(ds.path) / FILTERS_DIR / "meta.json").exists()


@dataclass(frozen=True)
class Allowed:
    """The ids one filter lets through, in the forms methods take: a boolean mask (n,), the
    sorted ids (int64), and a little-endian packed bitmap (faiss ``IDSelectorBitmap``'s layout).
    Built by the harness once per filter, outside the timed searches."""

    mask: np.ndarray
    ids: np.ndarray
    bitmap: np.ndarray

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Allowed:
        mask = np.ascontiguousarray(mask, dtype=bool)
        return cls(mask, np.flatnonzero(mask).astype(np.int64), np.packbits(mask, bitorder="little"))

    @property
    def count(self) -> int:
        return int(self.ids.size)


@dataclass
class Family:
    """One filter family of a prepared data set: which filter each query carries and its
    exact filtered ground truth."""

    name: str
    groups: np.ndarray  # (nq,) int32: row of masks each query carries
    packed: np.ndarray  # (G, ceil(n/8)) uint8, little-endian bits
    gt_ids: np.ndarray
    gt_dist: np.ndarray
    n: int
    info: dict[str, Any]

    @cached_property
    def masks(self) -> np.ndarray:
        return np.unpackbits(self.packed, axis=1, count=self.n, bitorder="little").astype(bool)

    @cached_property
    def allowed(self) -> list[Allowed]:
        return [Allowed.from_mask(m) for m in self.masks]

    @cached_property
    def passing(self) -> np.ndarray:
        """Per query, how many ids pass its filter."""
        return self.masks.sum(axis=1)[self.groups]


class FilterSet:
    """The ``filters/`` part of a prepared data set."""

    def __init__(self, ds: PreparedDataset):
        self.path = Path(ds.path) / FILTERS_DIR
        try:
            self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"filters of {ds.path} are unreadable ({exc}); delete {self.path} to rebuild") from exc
        if self.meta.get("dataset_fingerprint") != ds.fingerprint:
            raise DataError(f"filters in {self.path} belong to other data; delete the folder to rebuild")
        self.nq = int(self.meta["nq"])
        self.n = int(self.meta["n"])

    @property
    def names(self) -> list[str]:
        return list(self.meta["families"])

    def family(self, name: str) -> Family:
        if name not in self.meta["families"]:
            raise DataError(f"unknown filter family {name!r}; this data set has {', '.join(self.names)}")
        info = self.meta["families"][name]
        stem = info["stem"]
        try:
            arrays = [np.load(self.path / f"{stem}_{part}.npy") for part in ("groups", "masks", "gt_ids", "gt_dist")]
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"filters in {self.path} are corrupt ({exc}); delete the folder to rebuild") from exc
        return Family(name, *arrays, n=self.n, info=info)


# --------------------------------------------------------------------------------------------
# helpers for filtered methods


def pad_results(scores: np.ndarray, ids: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Pad (nq, k') results to k columns with id -1 (and the worst score)."""
    if ids.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    pad = k - ids.shape[1]
    fill = np.float32(np.inf if metric == "l2" else -np.inf)
    return (np.hstack([scores.astype(np.float32), np.full((ids.shape[0], pad), fill, np.float32)]),
            np.hstack([ids.astype(np.int64), np.full((ids.shape[0], pad), -1, np.int64)]))


def knn_in_subset(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int,
                  metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` among ``vectors`` (the rows of ``ids``), with global ids, padded."""
    import faiss

    kk = min(int(k), ids.size)
    if kk == 0:
        return pad_results(np.empty((queries.shape[0], 0), np.float32), np.empty((queries.shape[0], 0), np.int64),
                           k, metric)
    d, i = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(vectors, dtype=np.float32),
                     kk, metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    return pad_results(d, np.where(i >= 0, ids[np.maximum(i, 0)], -1), k, metric)


def keep_passing(scores: np.ndarray, ids: np.ndarray, mask: np.ndarray, k: int,
                 metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Post-filter: the first k results of each row that pass ``mask``, in their order, padded."""
    ok = (ids >= 0) & mask[np.maximum(ids, 0)]
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
    out_ids = np.take_along_axis(ids, order, 1)
    out_scores = np.take_along_axis(scores, order, 1).astype(np.float32)
    keep = np.take_along_axis(ok, order, 1)
    fill = np.float32(np.inf if metric == "l2" else -np.inf)
    return pad_results(np.where(keep, out_scores, fill), np.where(keep, out_ids, -1), k, metric)
