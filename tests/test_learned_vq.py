"""Learned PQs on frozen embeddings (jpq, repconc, distill-vq): training lowers its own loss and
beats the opq-pq it starts from on a synthetic ranking task with a known structure, the bytes are
those of that opq-pq, JPQ keeps the documents' codes, RepCONC's assignment is balanced, and an
interrupted training resumes to the same result."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

pytest.importorskip("torch")

from harness.groundtruth import exact_knn  # noqa: E402
from harness.registry import get_method  # noqa: E402
from methods import _learned_pq  # noqa: E402
from methods.repconc import constrained_codes  # noqa: E402

D, N, M = 16, 2000, 4
LEARNED = ["jpq", "repconc", "distill-vq"]
#: a few epochs on the synthetic task (the shipped budgets are sized for n = 20,000)
SCHEDULE = {"jpq": (4, 1000), "repconc": (6, 600), "distill-vq": (4, 1000)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


@pytest.fixture(scope="module")
def task() -> dict[str, np.ndarray]:
    """Clustered unit vectors; queries are noisy copies of documents that weigh the first half of
    the dimensions 10x more than the rest, so a ranking-trained codebook has something to learn
    that a reconstruction-trained one does not. 1,000 training and 200 test queries."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, D)) * 2
    base = centres[rng.integers(20, size=N)] + rng.normal(size=(N, D))
    q = base[rng.choice(N, 1200)] + 0.5 * rng.normal(size=(1200, D))
    q[:, D // 2:] *= 0.1
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    base, train_q, test_q = base.astype(np.float32), q[:1000].astype(np.float32), q[1000:].astype(np.float32)
    return {"base": base, "train_q": train_q, "test_q": test_q, "gt": exact_knn(base, test_q, 10, "ip")[1]}


def _recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[:10]) & set(b[:10])) for a, b in zip(ids, gt, strict=True)]) / 10)


def _build(name: str, task: dict, monkeypatch: pytest.MonkeyPatch | None = None, **params):
    cls = get_method(name)
    if monkeypatch is not None and name in SCHEDULE:
        epochs, steps = SCHEDULE[name]
        monkeypatch.setattr(cls, "epochs", epochs)
        monkeypatch.setattr(cls, "max_steps", steps)
    index = cls(D, "ip", m=M, nbits=8, **params)
    index.expected_n = N
    index.set_num_threads(1)
    index.fit(task["base"], task["train_q"] if cls.uses_train_queries else None)
    index.add(task["base"])
    return index


@pytest.fixture(scope="module")
def init(task):
    return _build("opq-pq", task)


@pytest.mark.parametrize("name", LEARNED)
def test_training_lowers_its_loss_and_beats_its_initialisation(name, task, init, monkeypatch):
    index = _build(name, task, monkeypatch)
    assert len(index.history) >= 3
    assert index.history[-1] < index.history[0], f"{name}: loss {index.history}"
    assert index.init_digest == _digest(init), "the initial codebooks are not those of opq-pq"
    base_recall = _recall(init.search(task["test_q"], 10)[1], task["gt"])
    learned = _recall(index.search(task["test_q"], 10)[1], task["gt"])
    assert learned >= base_recall + 0.01, f"{name}: recall {learned:.3f} vs opq-pq {base_recall:.3f}"
    assert max(index.val_history) > index.val_history[0]


def _digest(opq_index) -> str:
    import hashlib

    pq = faiss.downcast_index(faiss.downcast_index(opq_index.index).index).pq
    return hashlib.sha256(faiss.vector_to_array(pq.centroids).tobytes()).hexdigest()[:16]


def _inner(index) -> faiss.IndexPQ:
    return faiss.downcast_index(faiss.downcast_index(index.index).index)


@pytest.mark.parametrize("name", LEARNED)
def test_bytes_are_those_of_opq_pq_and_search_is_faiss(name, task, init, monkeypatch):
    cls = get_method(name)
    monkeypatch.setattr(cls, "max_steps", 10)
    index = _build(name, task)
    assert index.memory().as_dict() == init.memory().as_dict()
    assert cls.bytes_per_vector(D, N, m=M, nbits=8) == get_method("opq-pq").bytes_per_vector(D, N, m=M, nbits=8)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexPreTransform)
    assert isinstance(_inner(index), faiss.IndexPQ)
    # the trained codebooks are what faiss searches with
    c_learned = faiss.vector_to_array(_inner(index).pq.centroids)
    assert not np.array_equal(c_learned, faiss.vector_to_array(_inner(init).pq.centroids))


def test_jpq_keeps_the_documents_codes(task, init, monkeypatch):
    index = _build("jpq", task, monkeypatch)
    codes = faiss.vector_to_array(_inner(index).codes)
    assert np.array_equal(codes, faiss.vector_to_array(_inner(init).codes))


def test_jpq_query_map_variant(task, init, monkeypatch):
    cls = get_method("jpq")
    index = _build("jpq", task, monkeypatch, variant="query-map")
    assert index.qmap is not None and index.qmap.shape == (D, D)
    assert not np.allclose(index.qmap, np.eye(D))
    assert index.memory().ram == init.memory().ram + 4 * D * D
    measured = index.memory().ram / N
    assert measured == pytest.approx(cls.bytes_per_vector(D, N, m=M, nbits=8, variant="query-map"), rel=0.02)
    assert "query-map" in cls.variants and cls.post_hoc


def test_constrained_assignment_is_balanced():
    import torch

    rng = np.random.default_rng(0)
    cents = rng.normal(size=(1, 16, 2)).astype(np.float32)
    # most vectors crowd around one centroid: nearest-centroid assignment is very unbalanced
    x = np.concatenate([cents[0, :1] + 0.05 * rng.normal(size=(200, 2)), rng.normal(size=(56, 2))]).astype(np.float32)
    free = np.argmin(((x[:, None, :] - cents[0][None]) ** 2).sum(-1), axis=1)
    codes = constrained_codes(torch, torch.from_numpy(x), torch.from_numpy(cents)).numpy()[:, 0]
    assert np.bincount(free, minlength=16).max() >= 150
    counts = np.bincount(codes, minlength=16)
    assert counts.max() <= 2 * len(x) / 16, counts


def test_interrupted_training_resumes_to_the_same_result(task, tmp_path, monkeypatch):
    cls = get_method("distill-vq")
    monkeypatch.setattr(cls, "epochs", 3)
    monkeypatch.setattr(cls, "max_steps", 1000)
    ref = _build("distill-vq", task)
    calls = {"n": 0}
    real = cls._loss

    def failing(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 30:  # in the second epoch (21 steps per epoch)
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setenv(_learned_pq.CHECKPOINT_ENV, str(tmp_path))
    monkeypatch.setattr(cls, "_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        _build("distill-vq", task)
    assert list(tmp_path.glob("*.ckpt")), "no checkpoint written after the first epoch"
    monkeypatch.setattr(cls, "_loss", real)
    resumed = _build("distill-vq", task)
    assert not list(tmp_path.glob("*.ckpt")), "checkpoint left behind after a completed training"
    assert resumed.history == pytest.approx(ref.history)
    assert np.array_equal(faiss.vector_to_array(_inner(resumed).pq.centroids),
                          faiss.vector_to_array(_inner(ref).pq.centroids))
