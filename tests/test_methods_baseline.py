"""Method-specific checks of the baseline plugins (fp16, sq8/sq4, pq, opq-pq, ivf-flat, ivf-pq,
hnsw, hnsw-sq8, binary-rescore, rabitq) on the ``tiny`` fixture and on bigann10k."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest

from harness.groundtruth import exact_knn, same_up_to_ties
from harness.method import Method
from harness.registry import get_method
from methods import _faiss
from methods.opq_pq import train_opq_rotation
from methods.rabitq import rabitq_code_bytes
from tests.conftest import recall_at

K = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One faiss / BLAS thread (shared machine; oversubscribed OpenMP pools crawl)."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            yield
    except ImportError:
        yield
    faiss.omp_set_num_threads(old)


def build(name: str, base: np.ndarray, metric: str, **params: Any) -> Method:
    index = get_method(name)(base.shape[1], metric, **params)
    index.expected_n = base.shape[0]
    index.set_num_threads(1)
    index.fit(base)
    index.add(base)
    return index


def recall(index: Method, tiny, metric: str, **search: Any) -> float:
    _, ids = index.search(tiny.data(metric)[1], K, **search)
    return recall_at(np.asarray(ids), tiny.gt(metric, K), K)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_scalar_quantizers_recall(tiny, metric):
    base = tiny.data(metric)[0]
    assert recall(build("fp16", base, metric), tiny, metric) >= 0.99
    assert recall(build("sq8", base, metric), tiny, metric) >= 0.95
    r4 = recall(build("sq4", base, metric), tiny, metric)
    assert 0.3 <= r4 <= recall(build("sq8", base, metric), tiny, metric)


def test_scalar_quantizer_sizes(tiny):
    base = tiny.base
    n, d = base.shape
    assert build("fp16", base, "l2").memory().codes == 2 * d * n
    assert build("sq8", base, "l2").memory().codes == d * n
    sq4 = build("sq4", base, "l2").memory()
    assert sq4.codes == (d + 1) // 2 * n
    assert sq4.shared >= 8 * d  # per-dimension min and range


def test_hnsw_high_ef_recall(tiny):
    for metric in ("l2", "ip"):
        base = tiny.data(metric)[0]
        for M in (8, 16):
            index = build("hnsw", base, metric, M=M)
            assert recall(index, tiny, metric, ef=320) >= 0.95, (metric, M)
            assert recall(index, tiny, metric, ef=320) >= recall(index, tiny, metric, ef=10)


def test_hnsw_memory_is_the_saved_index(tiny, tmp_path):
    index = build("hnsw", tiny.base, "l2", M=16)
    mem = index.memory()
    assert mem.codes == tiny.base.nbytes
    assert mem.ram == index.save(str(tmp_path / "h.bin"))
    # level-0 links alone: n·(2M ids + count); upper levels add more
    assert mem.structure >= tiny.base.shape[0] * (2 * 16 * 4 + 4 + 8)


def test_hnsw_thread_setting_keeps_results(tiny):
    index = build("hnsw", tiny.base, "l2", M=16)
    _, one = index.search(tiny.queries, K, ef=64)
    index.set_num_threads(2)
    _, two = index.search(tiny.queries, K, ef=64)
    assert index.threads == 2
    np.testing.assert_array_equal(one, two)


def test_hnsw_sq8_recall(tiny):
    index = build("hnsw-sq8", tiny.base, "l2", M=16)
    assert recall(index, tiny, "l2", ef=320) >= 0.9
    assert index.memory().codes == tiny.base.shape[0] * tiny.d


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_flat_full_probe_is_exact(tiny, metric):
    base, queries = tiny.data(metric)
    index = build("ivf-flat", base, metric, nlist_c=4)
    nlist = index.index.nlist
    assert nlist == _faiss.nlist_for(base.shape[0], 4)
    dist, ids = index.search(queries, K, nprobe=nlist)
    ref_d, ref_i = exact_knn(base, queries, K, metric)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-3)
    assert same_up_to_ties(ref_i, ids, ref_d).all()
    assert recall(index, tiny, metric, nprobe=1) < 1.0  # one list of many is not exhaustive


def test_ivf_pq_refine_improves_recall(tiny):
    base = tiny.base
    plain = build("ivf-pq", base, "l2", m=8, refine=False)
    refined = build("ivf-pq", base, "l2", m=8, refine=True)
    r_plain = recall(plain, tiny, "l2", nprobe=16)
    r_refined = recall(refined, tiny, "l2", nprobe=16, k_factor=16)
    assert r_refined >= r_plain + 0.1
    assert r_refined >= 0.95
    n, d = base.shape
    assert refined.memory().ram - plain.memory().ram >= 4 * d * n  # the float vectors count
    assert refined.ivf.precomputed_table.size() == 0
    assert all("k_factor" not in s for s in get_method("ivf-pq").search_configs(m=8, refine=False))
    assert all("k_factor" in s for s in get_method("ivf-pq").search_configs(m=8, refine=True))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_binary_rescore(tiny, metric):
    base = tiny.data(metric)[0]
    n, d = base.shape
    f32 = build("binary-rescore", base, metric, rescore="float32")
    i8 = build("binary-rescore", base, metric, rescore="int8")
    none = build("binary-rescore", base, metric, rescore="none")
    r_f32 = recall(f32, tiny, metric, factor=32)
    r_i8 = recall(i8, tiny, metric, factor=32)
    r_none = recall(none, tiny, metric)
    assert r_f32 >= 0.9
    assert r_i8 >= 0.85
    assert r_f32 > r_none and r_i8 > r_none
    assert recall(f32, tiny, metric, factor=1) == pytest.approx(r_none)  # re-orders the same k
    # the float vectors kept for re-scoring are part of the RAM account
    assert f32.memory().codes == n * (4 * d + d // 8)
    assert i8.memory().codes == n * (d + d // 8)
    assert none.memory().codes == n * (d // 8)


@pytest.mark.parametrize("variant", ["paper", "centred"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_binary_rescore_asymmetric_bits_costs_no_extra_bytes(tiny, metric, variant):
    base = tiny.data(metric)[0]
    n, d = base.shape
    bits = build("binary-rescore", base, metric, rescore="bits", variant=variant)
    none = build("binary-rescore", base, metric, rescore="none", variant=variant)
    assert bits.memory().codes == none.memory().codes == n * (d // 8)
    assert bits.memory().shared == (2 * 4 * d if variant == "centred" else 0)  # mean and σ / nothing
    for index, rescore in ((bits, "bits"), (none, "none")):
        assert get_method("binary-rescore").bytes_per_vector(d, n, rescore=rescore, variant=variant) == \
            pytest.approx(index.memory().ram / n)
    assert recall(bits, tiny, metric, factor=1) == pytest.approx(recall(none, tiny, metric))  # same k, re-ordered


def test_binary_rescore_bits_beats_hamming_on_sift(shared_data):
    base = np.load(shared_data / "bigann10k" / "base.npy").astype(np.float32)
    queries = np.load(shared_data / "bigann10k" / "queries.npy").astype(np.float32)
    gt = np.load(shared_data / "bigann10k" / "neighbors.npy")
    got = {r: build("binary-rescore", base, "l2", rescore=r, variant="centred").search(queries, K, factor=16)[1]
           for r in ("none", "bits")}  # SIFT is non-negative: signs at 0 need the centred variant
    rec = {r: recall_at(ids, gt, K) for r, ids in got.items()}
    assert rec["bits"] > rec["none"] + 0.05, rec  # measured 0.455 vs 0.371


def test_binary_rescore_bits_scores_the_sign_reconstruction(tiny):
    base, queries = tiny.data("ip")
    index = build("binary-rescore", base, "ip", rescore="bits", variant="centred")
    scores, ids = index.search(queries, K, factor=8)
    signs = np.where(base > index.mean, 1.0, -1.0).astype(np.float32)
    recon = index.mean + index.sigma * signs
    ref = np.einsum("qkd,qd->qk", recon[ids], queries)
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # with mean 0 and σ = 1 the scores are the blog's q · unpackbits(b), shifted: q·s = 2 q·b - Σq
    centred = base - base.mean(0)
    blog_like = build("binary-rescore", centred, "ip", rescore="bits", variant="centred")
    blog_like.mean[:] = 0.0
    blog_like.sigma[:] = 1.0
    scores0, _ = blog_like.search(queries, K, factor=8)
    _, cand = blog_like.binary.search(blog_like.sign_codes(queries), K * 8)
    b = np.unpackbits(blog_like._codes[cand], axis=-1)[..., :base.shape[1]].astype(np.float32)
    blog = -np.sort(-np.einsum("qkd,qd->qk", b, queries), axis=1)[:, :K]
    np.testing.assert_allclose(scores0, 2 * blog - queries.sum(1, keepdims=True), rtol=1e-4, atol=1e-4)


def test_binary_rescore_scores_are_exact_after_rescoring(tiny):
    base, queries = tiny.data("l2")
    index = build("binary-rescore", base, "l2", rescore="float32")
    dist, ids = index.search(queries, K, factor=8)
    ref = ((queries[:, None, :] - base[ids]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("nlist_c", [0, 4])
def test_rabitq_recall_grows_with_bits(tiny, nlist_c):
    recalls = [recall(build("rabitq", tiny.base, "l2", nb_bits=b, nlist_c=nlist_c), tiny, "l2", nprobe=256)
               for b in (1, 2, 4, 8)]
    assert all(b > a for a, b in zip(recalls, recalls[1:], strict=False)), recalls
    assert recalls[-1] >= 0.95


def test_rabitq_code_size_matches_faiss():
    for d in (7, 32, 100, 128, 384):
        for b in (1, 2, 3, 4, 8, 9):
            assert rabitq_code_bytes(d, b) == faiss.RaBitQuantizer(d, faiss.METRIC_L2, b).code_size


def test_rabitq_search_configs():
    cls = get_method("rabitq")
    assert all(set(s) == {"qb"} for s in cls.search_configs(nb_bits=1, nlist_c=0))
    # multi-bit codes take a quantized query too (faiss refines the 1-bit estimate with the extra bits)
    assert all(set(s) == {"nprobe", "qb"} for s in cls.search_configs(nb_bits=4, nlist_c=4))


def test_pq_and_opq(tiny):
    base = tiny.base
    r = {m: recall(build("pq", base, "l2", m=m, nbits=8), tiny, "l2") for m in (8, 16, 32)}
    assert r[8] < r[16] < r[32]
    r_opq = recall(build("opq-pq", base, "l2", m=16, nbits=8), tiny, "l2")
    assert r_opq >= r[16] - 0.03
    fast = build("pq", base, "l2", m=16, nbits=4)
    assert fast.memory().codes == -(-base.shape[0] // 32) * 32 * 8  # 32-vector blocks of m/2 bytes


def test_opq_rotation_is_orthogonal_and_lowers_distortion(tiny):
    x = tiny.base
    rot, cents = train_opq_rotation(x, 8, 8, niter=4)
    assert cents.shape == (8, 256, x.shape[1] // 8)
    np.testing.assert_allclose(rot @ rot.T, np.eye(x.shape[1]), atol=1e-4)

    def distortion(data: np.ndarray) -> float:
        pq = _faiss.quiet_pq(faiss.ProductQuantizer(data.shape[1], 8, 8))
        with _faiss.blas_distances():
            pq.train(data)
        return float(((pq.decode(pq.compute_codes(data)) - data) ** 2).sum(1).mean())

    assert distortion(np.ascontiguousarray(x @ rot.T)) < distortion(x)


def test_nlist_rule():
    assert _faiss.nlist_for(100_000, 4) == round(4 * 100_000**0.5)
    assert _faiss.nlist_for(3000, 4) == 3000 // 39  # clamped: >= 39 training points per list
    assert _faiss.nlist_for(10, 1) == 1


# ----- real data --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bigann(shared_data):
    root = shared_data / "bigann10k"
    base = np.load(root / "base.npy").astype(np.float32)
    queries = np.load(root / "queries.npy").astype(np.float32)
    gt = np.load(root / "neighbors.npy")[:, :K]
    return base, queries, gt


@pytest.mark.slow
def test_bigann10k_sanity(bigann):
    base, queries, gt = bigann
    hnsw = build("hnsw", base, "l2", M=16)
    assert recall_at(hnsw.search(queries, K, ef=160)[1], gt, K) >= 0.95
    ivf = build("ivf-flat", base, "l2", nlist_c=4)
    assert recall_at(ivf.search(queries, K, nprobe=16)[1], gt, K) >= 0.9
    assert recall_at(ivf.search(queries, K, nprobe=ivf.index.nlist)[1], gt, K) == 1.0
