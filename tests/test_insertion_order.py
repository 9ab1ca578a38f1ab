"""HNSW insertion order (issue 12 §2): pointwise LID, the orders themselves, and that the graph
methods really insert in them while keeping the harness's ids."""

from __future__ import annotations

import numpy as np
import pytest

import methods  # noqa: F401 - registers the plugins
from harness.intrinsic import pointwise_lid
from harness.registry import get_method
from methods.hnsw import INSERTION_ORDERS, insertion_permutation
from tests.conftest import clustered

N, D = 1200, 16


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(N, D, 1, seed=3, clusters=6)[0]


def _labels_by_internal_id(index) -> np.ndarray:
    """hnswlib's stored label of each element, in internal-id (= insertion) order, read from its
    level-0 block (hnswlib's own get_ids_list walks a hash map, in no defined order)."""
    st = index.__getstate__()[0]
    n, size = st["cur_element_count"], st["size_data_per_element"]
    block = np.asarray(st["data_level0"], dtype=np.uint8)[: n * size].reshape(n, size)
    off = st["label_offset"]
    return np.ascontiguousarray(block[:, off:off + 8]).view(np.uint64)[:, 0].astype(np.int64)


def _plane(n: int, r: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, r)))
    return (rng.random((n, r)) @ basis.T).astype(np.float32)


def test_pointwise_lid_recovers_known_dimension() -> None:
    plane = pointwise_lid(_plane(1500, 2, 20, seed=0), k=20)
    assert plane.shape == (1500,) and not np.isnan(plane).any()
    assert 1.7 < np.median(plane) < 2.4
    eight = pointwise_lid(_plane(1500, 8, 20, seed=1), k=20)
    assert 5.5 < np.median(eight) < 10.0
    x = _plane(500, 3, 12, seed=2)
    ids = np.array([7, 3, 499])
    np.testing.assert_allclose(pointwise_lid(x, ids=ids), pointwise_lid(x)[ids])


def test_orders_are_permutations_and_differ(data: np.ndarray) -> None:
    assert insertion_permutation(data, "data") is None
    perms = {o: insertion_permutation(data, o, "l2") for o in INSERTION_ORDERS if o != "data"}
    perms["random-1"] = insertion_permutation(data, "random", "l2", seed=1)
    for name, p in perms.items():
        assert np.array_equal(np.sort(p), np.arange(N)), name
        assert not np.array_equal(p, np.arange(N)), name
    names = list(perms)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(perms[a], perms[b]), (a, b)
    lid = pointwise_lid(data, k=20)
    asc, desc = lid[perms["lid-asc"]], lid[perms["lid-desc"]]
    assert np.all(np.diff(asc[~np.isnan(asc)]) >= 0) and np.all(np.diff(desc[~np.isnan(desc)]) <= 0)
    # category: k-means clusters come out as contiguous blocks
    import faiss

    km = faiss.Kmeans(D, 6, niter=20, seed=1234, verbose=False)
    km.train(data)
    labels = km.index.search(data, 1)[1][:, 0][insertion_permutation(data, "category", categories=6)]
    assert np.all(np.diff(labels) >= 0) and len(set(labels.tolist())) == 6
    with pytest.raises(ValueError, match="insertion_order"):
        insertion_permutation(data, "alphabetical")


@pytest.mark.parametrize("name", ["hnsw", "hnsw-sq8"])
@pytest.mark.parametrize("order", ["random", "lid-desc", "category"])
def test_graph_inserts_in_the_order_and_keeps_ids(data: np.ndarray, name: str, order: str) -> None:
    cls = get_method(name)
    m = cls(D, "l2", M=8, insertion_order=order, seed=5)
    m.set_num_threads(1)  # one thread: hnswlib inserts exactly in the given order
    m.fit(data)
    m.add(data)
    expect = insertion_permutation(data, order, "l2", seed=5)
    if name == "hnsw":
        inserted = _labels_by_internal_id(m.index)
    else:
        inserted = m.id_map.astype(np.int64)
    assert np.array_equal(inserted, expect)
    _, ids = m.search(data[:40], 1, ef=32)
    assert (ids[:, 0] == np.arange(40)).mean() >= 0.95  # each vector finds itself: ids are add()'s
    assert m.memory().ram / N == pytest.approx(cls.bytes_per_vector(D, N, M=8, insertion_order=order), rel=0.10)


def test_default_order_is_unchanged_and_map_is_counted(data: np.ndarray, tmp_path) -> None:
    h = get_method("hnsw")(D, "l2", M=8)
    h.set_num_threads(1)
    h.add(data)
    assert np.array_equal(_labels_by_internal_id(h.index), np.arange(N))
    plain = get_method("hnsw-sq8")(D, "l2", M=8)
    mapped = get_method("hnsw-sq8")(D, "l2", M=8, insertion_order="random")
    for m in (plain, mapped):
        m.set_num_threads(1)
        m.fit(data)
        m.add(data)
    assert plain.id_map is None
    assert mapped.memory().structure - plain.memory().structure == 4 * N
    size = mapped.save(str(tmp_path / "idx.bin"))
    assert (tmp_path / "idx.bin.ids.npy").is_file()
    assert size == (tmp_path / "idx.bin").stat().st_size + (tmp_path / "idx.bin.ids.npy").stat().st_size


def test_report_renders_the_study_summary(tmp_path) -> None:
    from harness.report import _insertion_order_html, insertion_order_summary

    assert insertion_order_summary(tmp_path) is None  # not run: no section
    assert _insertion_order_html(tmp_path, tmp_path / "report") == ""
    (tmp_path / "insertion_order.md").write_text(
        "# t\n\n## Effect size (best − worst order)\n\n| data set | ef | effect (points) |\n|---|---:|---:|\n"
        "| wordnet | 10 | **1.16** |\n| scifact | 40 | **0.62** |\n\nLargest effect: 1.16 points.\n\n"
        "## recall@10 by order\n\n| data set | ef |\n|---|---|\n| x | 1 |\n")
    headers, rows, note = insertion_order_summary(tmp_path)
    assert headers == ["data set", "ef", "effect (points)"]
    assert rows == [["wordnet", "10", "**1.16**"], ["scifact", "40", "**0.62**"]]
    assert note == "Largest effect: 1.16 points."
    page = _insertion_order_html(tmp_path, tmp_path / "report")
    assert "<b>1.16</b>" in page and 'href="../insertion_order.md"' in page and "| x |" not in page
