"""Synthetic embeddings fitted to real ones, generated in chunks at any size (issue 13 §3).

An iid Gaussian is a poor stand-in for sentence embeddings: their spectrum decays slowly (the
MiniLM WordNet definitions need 200 of 384 principal directions for 90% of their variance), they
cluster by topic, and their local intrinsic dimension (LID) is far below the ambient 384. This
module fits a small generative model to a real prepared data set and samples from it as many
vectors as asked, chunk by chunk, into a memory-mapped ``.npy``, so a 1M × 384 base never sits
in RAM whole.

The model (fitted by :func:`fit_model`, deterministic for a seed) is a mixture of probabilistic
PCA components (Tipping & Bishop, "Mixtures of probabilistic principal component analysers",
Neural Computation 11(2), 1999), fitted in one hard-assignment step:

1. the source vectors as searched (L2-normalised for cosine) are clustered by seeded faiss
   k-means into ``clusters`` components; each component keeps its share (weight) and mean;
2. per component, the top ``local_dim`` principal directions of its points, scaled by
   sqrt(lambda_i - sigma_k^2), and the maximum-likelihood residual variance sigma_k^2 (the mean
   of its remaining eigenvalues) — the local directions give the low local intrinsic dimension;
3. the residual is not isotropic: its shape (eigenvectors and relative eigenvalues) is the pooled
   covariance of every component's residual, so the global spectrum's slow tail is kept;
4. a sample is ``x = mu_k + W_k z + sigma_k S^(1/2) e`` (z, e standard normal), L2-normalised for
   a cosine data set (the source vectors are unit vectors; the model's norms before
   normalisation are close to 1, see :func:`fit_report`).

Queries (``queries = "fitted"``, the default) come from a query model fitted to the source's
queries (test and training queries together) that shares the document components
(:func:`fit_queries`): query weights are the components' shares of the real queries, query means
are moved toward the real queries' means (shrunk where few fell in a component), and the
residual's shape and scale are refitted to the queries, so queries sit off the documents'
manifold by as much as the real ones (their LID against the base and their nearest-neighbour
distance ratio follow the source). ``queries = "documents"`` draws them from the document model
(in-distribution queries).

The defaults (512 components, 12 local directions) were chosen by fitting the MiniLM WordNet
default subset (20,000 definitions) and comparing 20,000 synthetic vectors with it: spectrum,
LID of base and queries and the query nearest-neighbour ratio (``results/scale.md``).

Parameters are not stored in the repository (a fitted model of 512 components with 12 local
directions is about 20 MB): the model is fitted when the data set is prepared, from the prepared source data set
(``source``, by default the cached ``wordnet`` default subset, which is encoded first if it is
not cached), and cached under ``<cache>/synthetic/`` keyed by the source's fingerprint and the
options. Fit quality (spectrum, norms, LID) is in ``results/scale.md`` and from
:func:`fit_report`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from harness.errors import DataError

#: rows generated per chunk (at d = 384: ~300 MB of float64 work arrays, 50 MB written)
CHUNK = 32768
DEFAULTS: dict[str, Any] = {
    "source": "wordnet",  # the data set to fit: a name or folder for load_dataset, or a prepared folder
    "n": 1_000_000,
    "nq": 10_000,
    "train_queries": 0,
    "clusters": 512,  # mixture components
    "local_dim": 12,  # local principal directions per component
    "queries": "fitted",  # "fitted": own model fitted to the source queries; "documents"
    "seed": 0,
}


@dataclass
class GaussianModel:
    """A mixture of probabilistic-PCA components with a shared residual shape (see the module
    doc); arrays in float64."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d) component means
    loadings: np.ndarray  # (K, d, q) W_k: local principal directions scaled by sqrt(lambda - sigma^2)
    noise: np.ndarray  # (K,) sigma_k: residual standard deviation per dimension
    residual_basis: np.ndarray  # (d, d) eigenvectors of the pooled residual covariance
    residual_shape: np.ndarray  # (d,) its eigenvalues, scaled to mean 1
    normalise: bool

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, m: int, rng: np.random.Generator, *, raw: bool = False) -> np.ndarray:
        """``m`` vectors, float32 (unit norm when the model normalises, unless ``raw``)."""
        d, q = self.dim, self.loadings.shape[2]
        comp = rng.choice(self.weights.shape[0], size=m, p=self.weights)
        latent = rng.standard_normal((m, q))
        x = rng.standard_normal((m, d)) * np.sqrt(self.residual_shape)
        x = x @ self.residual_basis.T
        x *= self.noise[comp][:, None]
        for k in np.unique(comp):
            rows = np.flatnonzero(comp == k)
            x[rows] += self.means[k] + latent[rows] @ self.loadings[k].T
        if self.normalise and not raw:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}


FIELDS = ("weights", "means", "loadings", "noise", "residual_basis", "residual_shape")


def _rows(x: np.ndarray, normalise: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if normalise else x


def _residual_shape(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors and eigenvalues (scaled to mean 1) of a pooled residual covariance."""
    ev, vec = np.linalg.eigh(cov)
    ev = np.maximum(ev, 0.0)
    return vec, ev / max(float(ev.mean()), 1e-30)


def fit_model(x: np.ndarray, clusters: int, local_dim: int, *, normalise: bool, seed: int = 0) -> GaussianModel:
    """Fit ``clusters`` components of ``local_dim`` local directions to ``x`` (n, d): seeded faiss
    k-means, then per cluster its share, mean, top local directions and residual variance; the
    residual's shape is the pooled residual covariance of all clusters. See the module doc."""
    x = _rows(x, normalise)
    n, d = x.shape
    if not 1 <= local_dim < d:
        raise DataError(f"fitted synthetic: local_dim must be in [1, {d - 1}], got {local_dim}")
    if not 1 <= clusters <= n // 2:
        raise DataError(f"fitted synthetic: clusters must be in [1, n/2 = {n // 2}], got {clusters}")
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(d, clusters, niter=20, seed=seed, max_points_per_centroid=n, min_points_per_centroid=1,
                      verbose=False)
    km.train(x32)
    assign = km.index.search(x32, 1)[1][:, 0]
    sizes = np.bincount(assign, minlength=clusters)
    keep = np.flatnonzero(sizes >= 2)  # a component needs two points for a spread
    means = np.empty((keep.size, d))
    loadings = np.zeros((keep.size, d, local_dim))
    noise = np.empty(keep.size)
    pooled = np.zeros((d, d))
    for j, k in enumerate(keep):
        xk = x[assign == k]
        means[j] = xk.mean(axis=0)
        _, sv, vt = np.linalg.svd(xk - means[j], full_matrices=False)
        lam = np.zeros(d)
        lam[: sv.size] = sv**2 / xk.shape[0]  # the within-component covariance's eigenvalues
        q = min(local_dim, sv.size)
        sigma2 = float(lam[q:].mean())  # maximum-likelihood PPCA noise (Tipping & Bishop)
        loadings[j, :, :q] = vt[:q].T * np.sqrt(np.maximum(lam[:q] - sigma2, 0.0))
        noise[j] = np.sqrt(sigma2)
        rest = (xk - means[j]) - (xk - means[j]) @ vt[:q].T @ vt[:q]  # outside the local directions
        pooled += rest.T @ rest
    basis, shape = _residual_shape(pooled / n)
    noise = np.maximum(noise, 0.1 * float(np.median(noise)))  # clusters of duplicates keep some spread
    w = sizes[keep] / sizes[keep].sum()
    return GaussianModel(weights=w, means=means, loadings=loadings, noise=noise, residual_basis=basis,
                         residual_shape=shape, normalise=normalise)


def fit_queries(doc: GaussianModel, queries: np.ndarray, *, prior: float = 10.0) -> GaussianModel:
    """A query model sharing the document components: each real query is assigned to its
    nearest document component mean; a component's query weight is its share of the queries
    (plus one, so every component can emit queries), its query mean the document mean moved
    toward the mean of its queries by n_k / (n_k + ``prior``) (shrunk where few queries fell),
    its local directions the documents', and the residual is refitted to the queries (pooled
    shape, and one scale: the queries' mean residual energy over the documents' model)."""
    qx = _rows(queries, doc.normalise)
    n, d = qx.shape
    idx = faiss.IndexFlatL2(d)
    idx.add(np.ascontiguousarray(doc.means, dtype=np.float32))
    assign = idx.search(np.ascontiguousarray(qx, dtype=np.float32), 1)[1][:, 0]
    counts = np.bincount(assign, minlength=doc.weights.size).astype(np.float64)
    sums = np.zeros_like(doc.means)
    np.add.at(sums, assign, qx)
    with np.errstate(invalid="ignore", divide="ignore"):
        qmean = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], doc.means)
    shrink = (counts / (counts + prior))[:, None]
    means = doc.means + shrink * (qmean - doc.means)
    pooled = np.zeros((d, d))
    energy = expected = 0.0
    for k in np.unique(assign):
        r = qx[assign == k] - means[k]
        w = doc.loadings[k]
        u, s, _ = np.linalg.svd(w, full_matrices=False)
        u = u[:, s > 0]
        rest = r - r @ u @ u.T
        pooled += rest.T @ rest
        energy += float((rest**2).sum())
        expected += r.shape[0] * (d - u.shape[1]) * doc.noise[k] ** 2
    basis, shape = _residual_shape(pooled / n)
    scale = np.sqrt(energy / expected)  # the queries' residual energy over the documents' model
    weights = (counts + 1.0) / (counts + 1.0).sum()
    return GaussianModel(weights=weights, means=means, loadings=doc.loadings, noise=doc.noise * scale,
                         residual_basis=basis, residual_shape=shape, normalise=doc.normalise)


def spectrum(x: np.ndarray, normalise: bool, sample: int = 20000, seed: int = 0) -> np.ndarray:
    """Eigenvalues of the covariance of (a sample of) ``x``, descending."""
    if x.shape[0] > sample:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], sample, replace=False))
        x = x[rows]
    xs = _rows(x, normalise)
    xs = xs - xs.mean(axis=0)
    return np.sort(np.maximum(np.linalg.eigvalsh(xs.T @ xs / xs.shape[0]), 0.0))[::-1]


def spectrum_error(real: np.ndarray, synth: np.ndarray) -> dict[str, float]:
    """How two spectra differ: total variance ratio, worst relative error of the cumulative
    energy curve, and the dimensions holding 50/90/99% of the energy (synthetic / real)."""
    cr, cs = np.cumsum(real) / real.sum(), np.cumsum(synth) / synth.sum()

    def dims(c: np.ndarray, f: float) -> int:
        return int(np.searchsorted(c, f) + 1)

    out: dict[str, float] = {"total_variance_ratio": float(synth.sum() / real.sum()),
                             "max_cum_energy_error": float(np.max(np.abs(cs - cr)))}
    for f in (0.5, 0.9, 0.99):
        out[f"dims{int(f * 100)}_real"] = dims(cr, f)
        out[f"dims{int(f * 100)}_synth"] = dims(cs, f)
    return out


# --------------------------------------------------------------------------------------------
# generation in chunks


def _chunk_rng(seed: int, role: int, chunk: int) -> np.random.Generator:
    """One independent stream per (seed, role, chunk): the output does not depend on how many
    chunks were written before (a resumed or partial generation gives the same rows)."""
    return np.random.default_rng([int(seed), int(role), int(chunk)])


def generate(model: GaussianModel, n: int, file: Path, *, seed: int, role: int, chunk: int = CHUNK,
             progress: bool = False) -> np.ndarray:
    """Write ``n`` samples to ``file`` (``.npy``, float32) chunk by chunk, atomically (a partial
    file is never left under the final name); returns it memory-mapped."""
    from tqdm import tqdm

    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, model.dim))
        for i, r0 in enumerate(tqdm(range(0, n, chunk), desc=f"generate {file.stem}", disable=not progress)):
            m = min(chunk, n - r0)
            out[r0 : r0 + m] = model.sample(m, _chunk_rng(seed, role, i))
        out.flush()
        del out
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(file, mmap_mode="r")


# --------------------------------------------------------------------------------------------
# the data set builder (format "synthetic", kind "fitted")


def options(given: dict[str, Any], name: str) -> dict[str, Any]:
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise DataError(f"data set {name}: unknown fitted option(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **given}
    for key in ("n", "nq", "clusters", "local_dim", "seed", "train_queries"):
        if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < (0 if key in ("seed", "train_queries") else 1):
            raise DataError(f"data set {name}: {key} must be a {'non-negative' if key in ('seed', 'train_queries') else 'positive'} "
                            f"integer, got {o[key]!r}")
    if o["queries"] not in ("fitted", "documents"):
        raise DataError(f"data set {name}: queries must be 'fitted' or 'documents', got {o['queries']!r}")
    return o


def fit_sources(source: Any) -> tuple[np.ndarray, np.ndarray, str, bool, str]:
    """(documents, queries incl. training queries, metric, normalise, fingerprint) of ``source``."""
    from harness.dataset import PreparedDataset
    from harness.loaders import load_dataset

    folder = Path(str(source))
    ds = PreparedDataset(folder) if (folder / "meta.json").is_file() else load_dataset(str(source), progress=True)
    q = [np.asarray(ds.queries)]
    if ds.train_queries is not None:
        q.append(np.asarray(ds.train_queries))
    return np.asarray(ds.base), np.concatenate(q), ds.metric, ds.metric == "cosine", ds.fingerprint


def fitted_models(o: dict[str, Any], cache: Path) -> tuple[GaussianModel, GaussianModel | None, dict[str, Any]]:
    """The document and query models for options ``o``, fitted once and cached; and the source's
    description (name, fingerprint, metric)."""
    docs, queries, metric, normalise, fp = fit_sources(o["source"])
    fit_opts = {k: o[k] for k in ("clusters", "local_dim", "queries", "seed")}
    key = hashlib.sha256(json.dumps({"source_fp": fp, **fit_opts}, sort_keys=True).encode()).hexdigest()[:16]
    file = cache / f"fitted-model-{key}.npz"
    models: dict[str, GaussianModel] = {}
    if file.exists():
        try:
            with np.load(file) as z:
                for role in ("doc", "query"):
                    if f"{role}_mean" in z.files:
                        models[role] = GaussianModel(
                            **{f: z[f"{role}_{f}"] for f in FIELDS},
                            normalise=bool(z[f"{role}_normalise"]))
        except (OSError, ValueError, EOFError, KeyError):
            models = {}
    if "doc" not in models:
        models = {"doc": fit_model(docs, o["clusters"], o["local_dim"], normalise=normalise, seed=o["seed"])}
        if o["queries"] == "fitted":
            models["query"] = fit_queries(models["doc"], queries)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"{role}_{k}": v for role, mdl in models.items() for k, v in mdl.arrays().items()})
        os.replace(tmp, file)
    source = {"source": str(o["source"]), "source_fingerprint": fp, "source_metric": metric, "model_key": key}
    return models["doc"], models.get("query"), source


def build(m: Any, progress: bool) -> Any:
    """RawDataset of a ``kind = "fitted"`` synthetic manifest: memory-mapped base and queries."""
    from harness.dataset import RawDataset
    from harness.loaders import cache_root

    o = options({k: v for k, v in m.options.items() if k != "kind"}, m.name)
    cache = cache_root() / "synthetic"
    doc_model, query_model, source = fitted_models(o, cache)
    if doc_model.normalise != (m.metric == "cosine"):
        raise DataError(f"data set {m.name}: metric {m.metric!r} but its source {o['source']!r} is "
                        f"{source['source_metric']!r}; fit a cosine source for a cosine data set")
    key = hashlib.sha256(json.dumps({"model": source["model_key"], **o}, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / f"fitted-{key}"
    seed = int(o["seed"])
    base_file, query_file = folder / "base.npy", folder / "queries.npy"
    base = np.load(base_file, mmap_mode="r") if base_file.exists() else None
    if base is None or base.shape != (o["n"], doc_model.dim):
        base = generate(doc_model, o["n"], base_file, seed=seed, role=0, progress=progress)
    nq_all = o["nq"] + o["train_queries"]
    queries = np.load(query_file, mmap_mode="r") if query_file.exists() else None
    if queries is None or queries.shape != (nq_all, doc_model.dim):
        queries = generate(query_model or doc_model, nq_all, query_file, seed=seed, role=1, progress=progress)
    train = queries[o["nq"]:] if o["train_queries"] else None
    return RawDataset(name=m.name, base=base, queries=queries[: o["nq"]], metric=m.metric,
                      train_queries=train, info={**m.info(), "options": o, **source})


def fit_report(real_docs: np.ndarray, real_queries: np.ndarray, synth_docs: np.ndarray,
               synth_queries: np.ndarray, metric: str, *, k: int = 20, sample: int = 2000) -> dict[str, Any]:
    """Spectrum, norms and LID of the synthetic against the real vectors (same sizes advised:
    LID depends on the density of the sample)."""
    from harness.intrinsic import dataset_stats

    normalise = metric == "cosine"
    real = dataset_stats(real_docs, real_queries, metric, k=k, sample=sample)
    synth = dataset_stats(synth_docs, synth_queries, metric, k=k, sample=sample)
    return {
        "spectrum_docs": spectrum_error(spectrum(real_docs, normalise), spectrum(synth_docs, normalise)),
        "spectrum_queries": spectrum_error(spectrum(real_queries, normalise), spectrum(synth_queries, normalise)),
        "real": real,
        "synthetic": synth,
    }
