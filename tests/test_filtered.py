"""Filtered search (issue 12 §1): filtered ground truth, the filter families, every filtered
method's recall against brute force and its ids passing the filter, invalid rows for a method
that returns failing ids, and an end-to-end `vecbudget run` on a tiny filtered data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.dataset import PreparedDataset
from harness.filters import (
    FAMILIES,
    Allowed,
    Attributes,
    FilterSet,
    filtered_ground_truth,
    make_families,
)
from harness.registry import get_method
from harness.worker import Task

REPO = Path(__file__).resolve().parents[1]
BAD_PLUGIN = REPO / "tests" / "plugins" / "vecbudget_filter_bad.py"


def brute_force(base: np.ndarray, queries: np.ndarray, masks: np.ndarray, groups: np.ndarray, k: int,
                metric: str) -> np.ndarray:
    """Top-k ids among the passing rows, one query at a time, in plain numpy (-1 padded)."""
    out = np.full((queries.shape[0], k), -1, np.int64)
    for i, q in enumerate(queries):
        score = base @ q if metric == "ip" else -((base - q) ** 2).sum(1)
        score = np.where(masks[groups[i]], score, -np.inf)
        order = np.argsort(-score, kind="stable")
        order = order[np.isfinite(score[order])][:k]
        out[i, : order.size] = order
    return out


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_filtered_ground_truth_equals_brute_force(metric: str) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(600, 8)).astype(np.float32)
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    masks = rng.random((5, 600)) < np.array([[0.5], [0.1], [0.02], [0.005], [0.0]])
    groups = rng.integers(0, 5, 40).astype(np.int32)
    dist, ids = filtered_ground_truth(base, queries, groups, masks, 20, metric)
    expected = brute_force(base, queries, masks, groups, 20, metric)
    np.testing.assert_array_equal(ids, expected)
    passing = masks.sum(1)[groups]
    assert ((ids >= 0).sum(1) == np.minimum(20, passing)).all()  # padded with -1 where fewer pass
    assert np.isinf(dist[ids < 0]).all()


def test_families_are_real_for_their_queries_and_hit_their_selectivity() -> None:
    rng = np.random.default_rng(0)
    n, nq = 1000, 50
    own = rng.integers(0, n, nq)
    pos, lex, length = rng.integers(0, 4, n), rng.integers(0, 45, n), rng.integers(1, 30, n).astype(float)
    attrs = Attributes(cats={"pos": (pos, pos[own]), "lexfile": (lex, lex[own])},
                       ords={"deflen": (length, length[own])})
    spec = {"range_width": 1, "selectivities": [0.001, 0.01, 0.1, 0.5], "random_groups": 4, "seed": 0}
    fams = make_families(attrs, n, nq, spec)
    assert list(fams) == FAMILIES
    for name in ("pos", "lexfile", "range", "pos&range", "lexfile&range"):
        groups, masks, _ = fams[name]
        assert masks[groups, own].all(), name  # the query's own document always passes
    _, m_lex, _ = fams["lexfile&range"]
    g_lex, m_l, _ = fams["lexfile"]
    g_rng, m_r, _ = fams["range"]
    g_c, m_c, _ = fams["lexfile&range"]
    np.testing.assert_array_equal(m_c[g_c], m_l[g_lex] & m_r[g_rng])
    for s in (0.001, 0.01, 0.1, 0.5):
        groups, masks, _ = fams[f"sel={s:g}"]
        assert (masks.sum(1) == max(1, round(s * n))).all()
        assert len({m.tobytes() for m in masks}) == masks.shape[0]  # distinct random subsets


# ----- methods: ids pass the filter, recall against brute force ------------------------------------
METHODS = [
    ("filter-exact", {}, {}, 0.999),
    ("filter-faiss", {"index": "flat"}, {"selector": "bitmap"}, 0.999),
    ("filter-faiss", {"index": "flat"}, {"selector": "batch"}, 0.999),
    ("filter-faiss", {"index": "ivf"}, {"nprobe": 64}, 0.95),
    ("filter-faiss", {"index": "hnsw", "M": 16}, {"efSearch": 128}, 0.9),
    ("filter-hnswlib", {"M": 16}, {"ef": 128}, 0.9),
    ("filter-post", {"M": 16}, {"factor": 64}, 0.9),
    ("filter-quantized", {"codec": "sq8"}, {}, 0.9),
    ("filter-quantized", {"codec": "pq8"}, {}, 0.5),
]


@pytest.fixture(scope="module")
def tiny_filtered() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    from tests.conftest import clustered

    base, queries = clustered(2000, 16, 20, seed=3)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rng = np.random.default_rng(5)
    masks = [rng.random(2000) < s for s in (0.5, 0.05, 0.004)]
    return base, queries, masks


@pytest.mark.parametrize(("method", "build", "search", "floor"), METHODS,
                         ids=[f"{m}-{json.dumps(b)}-{json.dumps(s)}" for m, b, s, _ in METHODS])
def test_filtered_method_recall_and_filter(tiny_filtered, method, build, search, floor) -> None:
    base, queries, masks = tiny_filtered
    index = get_method(method)(16, "ip", **build)
    index.expected_n = base.shape[0]
    index.set_num_threads(1)
    index.fit(base)
    index.add(base)
    recalls = []
    for mask in masks:
        allowed = Allowed.from_mask(mask)
        scores, ids = index.search(queries, 10, allowed=allowed, **search)
        assert ids.shape == (queries.shape[0], 10) and scores.shape == ids.shape
        valid = ids >= 0
        assert mask[ids[valid]].all(), f"{method} returned ids that fail the filter"
        truth = brute_force(base, queries, mask[None], np.zeros(len(queries), int), 10, "ip")
        hits = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(ids, truth, strict=True)]
        recalls.append(float(np.mean(hits)))
    assert recalls[0] >= floor, (method, recalls)  # the unselective filter: the method's own quality
    if floor >= 0.999:  # exact methods stay exact at every selectivity
        assert min(recalls) >= 0.999, recalls


# ----- the track: rows, invalid results, the CLI -----------------------------------------------------
def write_filtered_folder(folder: Path, n: int = 1500, d: int = 16, nq: int = 30, seed: int = 0) -> Path:
    """A vector folder with attributes and a manifest declaring filters (``-d folder/data.toml``)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.normal(size=(n, d)).astype(np.float32)
    own = rng.integers(0, n, nq)
    queries = base[own] + 0.3 * rng.normal(size=(nq, d)).astype(np.float32)
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries.astype(np.float32))
    pos, lex, length = rng.integers(0, 4, n), rng.integers(0, 12, n), rng.integers(1, 20, n)
    np.savez(folder / "attributes.npz", cat_pos_doc=pos, cat_pos_query=pos[own], cat_lexfile_doc=lex,
             cat_lexfile_query=lex[own], ord_len_doc=length, ord_len_query=length[own])
    (folder / "data.toml").write_text(
        'name = "tiny-filtered"\nformat = "vectors"\nmetric = "l2"\npath = "."\n\n'
        f'[options]\nfilters = "attributes.npz"\nfilter_queries = {nq}\nrandom_groups = 4\n')
    return folder


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> PreparedDataset:
    from harness.loaders import load_dataset

    tmp = tmp_path_factory.mktemp("filtered")
    folder = write_filtered_folder(tmp / "data")
    old = os.environ.get("VECBUDGET_CACHE")
    os.environ["VECBUDGET_CACHE"] = str(tmp / "cache")
    try:
        ds = load_dataset(str(folder / "data.toml"), progress=False)
    finally:
        if old is None:
            os.environ.pop("VECBUDGET_CACHE", None)
        else:
            os.environ["VECBUDGET_CACHE"] = old
    return ds


def _run(ds: PreparedDataset, method: str, searches: list[dict]) -> list[dict]:
    from harness.tracks import filtered

    task = Task.for_dataset(ds, method, {}, searches, [f"h{i}" for i in range(len(searches))],
                            latency_queries=10, latency_seconds=0.2, threads=1)
    return filtered.run_task(task, ds, get_method(method))


def test_track_rows_exact_method_scores_one(tiny_ds) -> None:
    fs = FilterSet(tiny_ds)
    assert fs.names == FAMILIES and fs.nq == 30
    rows = _run(tiny_ds, "filter-exact", [{"filter": f} for f in ("lexfile", "lexfile&range", "sel=0.001")])
    assert [r["status"] for r in rows] == ["ok"] * 3
    for r in rows:
        assert r["recall_at_10"] == pytest.approx(1.0) and r["recall_at_100"] == pytest.approx(1.0)
        assert r["nq"] == 30 and r["filter_violations"] == 0 and 0 < r["selectivity"] < 1
    assert rows[2]["selectivity"] == pytest.approx(round(0.001 * 1500) / 1500)


def test_method_returning_failing_ids_gets_invalid_rows(tiny_ds) -> None:
    from harness.registry import _load_plugin

    _load_plugin(str(BAD_PLUGIN))
    rows = _run(tiny_ds, "test-filter-ignored", [{"filter": "sel=0.01"}, {"filter": "pos"}])
    assert [r["status"] for r in rows] == ["invalid", "invalid"]
    assert all(r["filter_violations"] > 0 for r in rows)
    assert "fail the query's filter" in rows[0]["error"]


def test_cli_run_on_a_tiny_filtered_folder(tmp_path) -> None:
    folder = write_filtered_folder(tmp_path / "data")
    results = tmp_path / "results"
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "VECBUDGET_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp"),
           "VECBUDGET_PLUGINS": str(BAD_PLUGIN), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "cli.py", "run", "-d", str(folder / "data.toml"), "-m", "filter-exact",
                           "-m", "test-filter-ignored", "--results-dir", str(results), "-q", "--latency-queries", "10",
                           "--latency-seconds", "0.2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the filter-ignoring method failed
    assert "fail the query's filter" in proc.stderr
    df = pd.concat([pd.read_parquet(p) for p in (results / "runs").glob("*.parquet")])
    good = df[df["method"] == "filter-exact"]
    assert sorted(good["filter"]) == sorted(FAMILIES) and (good["status"] == "ok").all()
    assert (good["recall_at_10"] > 0.999).all()
    assert (df[df["method"] == "test-filter-ignored"]["status"] == "invalid").all()
    board = (results / "leaderboards" / "filtered" / "tiny-filtered.md").read_text()
    assert "Selectivity" in board and "filter-exact" in board and "test-filter-ignored" not in board
    assert (results / "plots" / "filtered" / "tiny-filtered" / "recall_qps_vs_selectivity.png").exists()
    assert "filtered leaderboard" in proc.stdout
    # the report site gets a filtered page (a filtered-only store has no dense leaderboard to show)
    rep = subprocess.run([sys.executable, "cli.py", "report", "--results-dir", str(results)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    page = (results / "report" / "filtered" / "tiny-filtered.html").read_text()
    assert "Selectivity" in page and "filter-exact" in page and "recall_qps_vs_selectivity.png" in page
    assert (results / "report" / "plots" / "filtered" / "tiny-filtered" / "recall_qps_vs_selectivity.png").exists()
    assert 'href="filtered/tiny-filtered.html"' in (results / "report" / "index.html").read_text()
    assert "## tiny-filtered: filtered search" in (results / "REPORT.md").read_text()
    assert (results / "report" / "methods" / "filter-exact.html").exists()


def test_filter_spec_is_part_of_the_data_set_identity(tmp_path, monkeypatch) -> None:
    """Runs under one filter spec never resume or rank as another's, nor as the plain vectors'."""
    from harness.loaders import load_dataset

    monkeypatch.setenv("VECBUDGET_CACHE", str(tmp_path / "cache"))
    folder = write_filtered_folder(tmp_path / "data", n=400, nq=10)
    manifest = (folder / "data.toml").read_text()
    (folder / "plain.toml").write_text(manifest.split("[options]")[0].replace("tiny-filtered", "tiny-plain"))
    (folder / "other.toml").write_text(manifest.replace("random_groups = 4", "random_groups = 5"))
    fps = [load_dataset(str(folder / f), progress=False).fingerprint for f in ("data.toml", "plain.toml", "other.toml")]
    assert len(set(fps)) == 3, fps
    again = load_dataset(str(folder / "data.toml"), progress=False).fingerprint
    assert again == fps[0]


def test_wordnet_attributes_come_from_the_data_lines(tmp_path) -> None:
    from harness.filters import LEXNAMES, POS_NAMES, wordnet_attributes
    from harness.wordnet import parse_data_file

    (tmp_path / "data.noun").write_text(
        "00001740 03 n 01 entity 0 000 | that which is perceived to have its own distinct existence\n"
        '02084071 05 n 02 dog 0 domestic_dog 0 000 | a member of the genus Canis; "the dog barked all night"\n')
    (tmp_path / "data.verb").write_text('01835496 38 v 01 travel 0 000 | change location; move; "he travels"\n')
    synsets = parse_data_file(tmp_path / "data.noun", "n") + parse_data_file(tmp_path / "data.verb", "v")
    assert [LEXNAMES[s.lexfile] for s in synsets] == ["noun.Tops", "noun.animal", "verb.motion"]
    docs = [s.id for s in synsets]
    attrs = wordnet_attributes(docs, ["q-dog", "q-travel"], {"q-dog": {"n02084071": 1}, "q-travel": {"v01835496": 1}},
                               synsets)
    pos_doc, pos_q = attrs.cats["pos"]
    assert [POS_NAMES[p] for p in pos_doc] == ["noun", "noun", "verb"] and list(pos_q) == [0, 1]
    assert list(attrs.cats["lexfile"][1]) == [5, 38]
    assert list(attrs.ords["deflen"][0]) == [10, 6, 3]  # definition length in words (examples removed)
