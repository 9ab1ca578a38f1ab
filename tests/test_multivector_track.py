"""The multi-vector track: Chamfer ground truth, MUVERA's encodings, CRISP, and a CLI run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.chamfer import chamfer_candidates, chamfer_topk, rerank
from harness.multivector import RaggedVectors
from tests.conftest import REPO


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def token_sets(n: int, d: int, seed: int, lo: int = 2, hi: int = 12, topics: int = 8) -> list[np.ndarray]:
    """Texts as token sets drawn around a few topic directions (unit tokens), as text tokens are."""
    centres = np.random.default_rng(12345).normal(size=(topics, d))  # shared by every set of dimension d
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(lo, hi + 1))
        picks = centres[rng.integers(topics, size=t)]
        out.append(unit(picks + 0.6 * rng.normal(size=(t, d))))
    return out


def brute_chamfer(q: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    return np.array([sum(max(float(qi @ dj) for dj in doc) for qi in q) for doc in docs])


def test_chamfer_scan_equals_brute_force():
    docs = token_sets(70, 16, 0)
    queries = token_sets(9, 16, 1)
    dv, qv = RaggedVectors.from_list(docs), RaggedVectors.from_list(queries)
    # tiny blocks: the block boundaries and the heap merge are exercised
    scores, ids = chamfer_topk(qv.flat, qv.offsets, dv.flat, dv.offsets, 10, doc_block_tokens=37)
    for i, q in enumerate(queries):
        exact = brute_chamfer(q, docs)
        order = np.lexsort((np.arange(70), -exact))[:10]
        np.testing.assert_array_equal(ids[i], order)
        np.testing.assert_allclose(scores[i], exact[order], rtol=1e-5)
        cand = np.array([5, -1, 3, 60])
        np.testing.assert_allclose(chamfer_candidates(q, dv.flat, dv.offsets, cand)[[0, 2, 3]],
                                   exact[[5, 3, 60]], rtol=1e-5)
    # re-ranking every document is the exhaustive scan
    s2, i2 = rerank(qv, dv.flat, dv.offsets, np.tile(np.arange(70), (9, 1)), 10)
    np.testing.assert_array_equal(i2, ids)
    # k larger than the candidates: -1 padding
    _, i3 = rerank(qv, dv.flat, dv.offsets, np.tile(np.array([4, 2, -1]), (9, 1)), 3)
    assert (i3[:, 2] == -1).all() and set(i3[0, :2]) == {2, 4}


# ------------------------------------------------------------------------------------------
# MUVERA


def fde_vs_chamfer(reps: int, d_proj: int, final_dim: int = 0, k_sim: int = 4) -> tuple[float, float]:
    """Over 20 queries x 60 documents: correlation of (1/R)·<FDE(q), FDE(d)> with Chamfer, and the
    mean absolute error per query token."""
    from methods.muvera import FDE

    d = 32
    docs, queries = token_sets(60, d, 2), token_sets(20, d, 3, lo=3, hi=6)
    f = FDE(d, k_sim=k_sim, d_proj=d_proj, reps=reps, final_dim=final_dim, seed=1)
    approx = f.encode(RaggedVectors.from_list(queries), "query") @ f.encode(RaggedVectors.from_list(docs), "document").T / reps
    exact = np.stack([brute_chamfer(q, docs) for q in queries])
    sizes = np.array([len(q) for q in queries])[:, None]
    return float(np.corrcoef(approx.ravel(), exact.ravel())[0, 1]), float(np.abs(approx - exact).__truediv__(sizes).mean())


def test_muvera_fde_inner_product_approximates_chamfer():
    # no inner projection: the only error is the partition's (an average instead of the max). The
    # paper bounds |(1/R)<F(Q), F(P)> - Chamfer(Q, P)| / |Q| by eps for k_sim ~ log(1/delta)/eps:
    # the error per query token shrinks as partitions are added, and the estimate's variance as
    # repetitions are added
    corr20, err20 = fde_vs_chamfer(reps=20, d_proj=32)
    corr1, _ = fde_vs_chamfer(reps=1, d_proj=32)
    assert corr20 > 0.8, corr20
    assert corr1 < corr20 - 0.1, (corr1, corr20)
    _, err_k2 = fde_vs_chamfer(reps=20, d_proj=32, k_sim=2)
    _, err_k6 = fde_vs_chamfer(reps=20, d_proj=32, k_sim=6)
    assert err_k6 < err_k2 - 0.05, (err_k2, err20, err_k6)
    # with the random ±1 inner projection (d -> 8) and a Count-Sketch final projection the
    # estimate is noisier but still tracks Chamfer
    corr_p, _ = fde_vs_chamfer(reps=20, d_proj=8)
    corr_f, _ = fde_vs_chamfer(reps=20, d_proj=8, final_dim=1024)
    assert corr_p > 0.7 and corr_f > 0.6, (corr_p, corr_f)


def test_muvera_fde_shapes_and_empty_partitions_filled():
    from methods.muvera import FDE

    docs = token_sets(5, 16, 4, lo=1, hi=3)
    f = FDE(16, k_sim=4, d_proj=8, reps=3, seed=0)
    fd = f.encode(RaggedVectors.from_list(docs), "document").reshape(5, 3, 16, 8)
    fq = f.encode(RaggedVectors.from_list(docs), "query").reshape(5, 3, 16, 8)
    assert f.out_dim == 3 * 16 * 8
    # documents: every partition filled (a token is never all zeros); queries: empty ones stay zero
    assert (np.abs(fd).sum(axis=-1) > 0).all()
    assert (np.abs(fq).sum(axis=-1) == 0).any()
    # a single-token document repeats its projected token in every partition
    one = f.encode(RaggedVectors.from_list([docs[0][:1]]), "document").reshape(3, 16, 8)
    np.testing.assert_allclose(one[0], np.broadcast_to(docs[0][:1] @ f.proj[0], (16, 8)), rtol=1e-5)


def test_muvera_fde_equals_fastembed_for_equal_seeds():
    fastembed = pytest.importorskip("fastembed.postprocess.muvera")
    from methods.muvera import FDE

    d, k_sim, reps = 32, 3, 4
    items = token_sets(50, d, 5, lo=1, hi=10)
    rv = RaggedVectors.from_list(items)
    # fastembed numbers a partition by plain binary, first hyperplane least significant; ours is
    # the Gray code of the bits with the first hyperplane most significant (the reference code)
    perm = np.array([int(sum(int(b) << j for j, b in enumerate(bits))) for bits in FDE(d, k_sim, 8, 1).partition_bits])
    for d_proj in (8, d):
        ours = FDE(d, k_sim, d_proj, reps, seed=7)
        ref = fastembed.Muvera(d, k_sim, d_proj, reps, random_seed=7)
        q = ours.encode(rv, "query").reshape(50, reps, 8, d_proj)
        ref_q = np.stack([ref.process_query(x) for x in items]).reshape(50, reps, 8, d_proj)[:, :, perm]
        np.testing.assert_allclose(q, ref_q, atol=1e-5)
        doc = ours.encode(rv, "document").reshape(50, reps, 8, d_proj)
        ref_d = np.stack([ref.process_document(x) for x in items]).reshape(50, reps, 8, d_proj)[:, :, perm]
        # equal wherever the algorithms agree: every occupied partition, and every empty one whose
        # nearest occupied partition is unique (fastembed breaks Hamming ties by partition, the
        # reference code by token)
        compared = 0
        for i, x in enumerate(items):
            for r in range(reps):
                occupied = np.unique(ours.partition(x, r))
                for p in range(8):
                    ham = (ours.partition_bits[p] != ours.partition_bits[occupied]).sum(axis=1)
                    if p in occupied or (ham == ham.min()).sum() == 1:
                        np.testing.assert_allclose(doc[i, r, p], ref_d[i, r, p], atol=1e-5)
                        compared += 1
        assert compared > 0.6 * 50 * reps * 8  # most partitions are compared (1,194 of 1,600 here)


# ------------------------------------------------------------------------------------------
# CRISP and the baselines


def build(name: str, docs: RaggedVectors, **params):
    from harness.registry import get_method

    m = get_method(name)(docs.dim, "ip", **params)
    m.fit(docs, None)
    m.warm_up()
    m.add(docs)
    return m


def test_crisp_with_as_many_centroids_as_tokens_is_exact_chamfer():
    docs = RaggedVectors.from_list(token_sets(80, 16, 6, lo=1, hi=7))
    queries = RaggedVectors.from_list(token_sets(10, 16, 7))
    exact = build("chamfer-exact", docs)
    s0, i0 = exact.search(queries, 10)
    full = build("crisp", docs, C=7, dtype="fp32")
    s1, i1 = full.search(queries, 10)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(s1, s0, rtol=1e-6)
    # C < tokens: min(C, tokens) centroids per document, bytes as the formula says
    small = build("crisp", docs, C=2, dtype="fp16")
    np.testing.assert_array_equal(np.diff(small.store.offsets), np.minimum(docs.lengths, 2))
    assert small.memory().ram == int(np.minimum(docs.lengths, 2).sum()) * 16 * 2 + 8 * 81
    s2, i2 = small.search(queries, 10)
    assert (i2 != i0).any()  # clustering changes the ranking: the test would see a no-op


def test_baselines_bytes_and_exactness(tmp_path):
    from harness.registry import get_method

    docs = RaggedVectors.from_list(token_sets(300, 32, 8))
    queries = RaggedVectors.from_list(token_sets(12, 32, 9))
    tpd = docs.n_tokens / len(docs)
    _, i_exact = build("chamfer-exact", docs).search(queries, 10)
    for name, params in (("chamfer-exact", {"dtype": "fp16"}), ("token-sq", {"bits": 8}),
                         ("token-pq", {"m": 8}), ("mean-pool", {}), ("crisp", {"C": 8, "dtype": "int8"}),
                         ("muvera", {"k_sim": 3, "d_proj": 8, "reps": 10, "final_dim": 0, "codec": "flat",
                                     "rerank": "fp16"})):
        m = build(name, docs, **params)
        assert m.save(str(tmp_path / name)) > 0  # the worker saves every index (disk bytes)
        analytic = get_method(name).bytes_per_vector(32, len(docs), tokens_per_doc=tpd, lengths=docs.lengths, **params)
        assert m.memory().ram / len(docs) == pytest.approx(analytic, rel=0.02), name
        s, ids = m.search(queries, 10, **({"candidates": 300} if name == "muvera" else {}))
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, i_exact, strict=True)])
        if name in ("chamfer-exact", "muvera"):  # fp16 tokens; MUVERA re-ranking every document
            assert recall >= 0.95, (name, recall)
        else:  # random ids would score 10/300; one pooled vector is the coarsest
            assert recall > (0.1 if name == "mean-pool" else 0.3), (name, recall)


# ------------------------------------------------------------------------------------------
# end to end: `vecbudget run` on a folder with shipped token vectors


def test_cli_run_on_a_tiny_multivector_folder(tmp_path):
    folder = tmp_path / "mvdata"
    docs, queries = token_sets(120, 16, 10), token_sets(25, 16, 11)
    RaggedVectors.from_list(docs).save(folder / "tokens" / "document")
    RaggedVectors.from_list(queries).save(folder / "tokens" / "query")
    np.save(folder / "base.npy", unit(np.stack([t.mean(axis=0) for t in docs])))
    np.save(folder / "queries.npy", unit(np.stack([t.mean(axis=0) for t in queries])))
    (folder / "mv.toml").write_text('name = "tinymv"\nformat = "vectors"\nmetric = "ip"\npath = "."\n'
                                    'tags = ["multivector"]\n')
    env = {"VECBUDGET_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    import os

    proc = subprocess.run([sys.executable, "cli.py", "run", "-d", str(folder / "mv.toml"), "-m", "muvera", "-m",
                           "chamfer-exact", "-b", "2000", "--results-dir", str(tmp_path / "res"),
                           "-q", "--latency-seconds", "0.05"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "B/doc" in proc.stdout
    rows = pd.concat([pd.read_parquet(f) for f in (tmp_path / "res" / "runs").glob("*.parquet")])
    assert set(rows["method"]) == {"muvera", "chamfer-exact"}
    assert (rows["status"] == "ok").all() and (rows["bytes_unit"] == "document").all()
    assert (rows["bytes_per_vector"] <= 2000 * 1.01).all()
    assert not rows["bytes_mismatch"].any()
    # recall is against exact Chamfer: the exact method's ranking is the ground truth
    exact = rows[rows["method"] == "chamfer-exact"]
    assert (exact["recall_at_10"] == 1.0).all() and (exact["recall_at_100"] == 1.0).all()
    mu = rows[rows["method"] == "muvera"]
    assert json.loads(mu["build_params"].iloc[0])["k_sim"] in (3, 4, 5)
    assert mu["recall_at_10"].between(0.05, 1.0).all()


def test_report_text_says_bytes_per_document_and_exact_chamfer():
    from harness.tracks.multivector import per_document_text

    text = per_document_text("392.3 B/vector; budget B/vec; bytes per vector; % of float32; exact float32 nDCG@10")
    assert text == ("392.3 B/document; budget B/doc; bytes per document; % of exact Chamfer; "
                    "exact Chamfer (float32 tokens) nDCG@10")
