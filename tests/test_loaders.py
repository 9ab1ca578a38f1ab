"""Loaders: every builder format, round trips through the file formats, downloads, bad input."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import re
import shutil
import socket
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from harness import beir_data, formats
from harness import dataset as dataset_mod
from harness.dataset import RawDataset, prepare, verify_shipped
from harness.datawarnings import DataWarning
from harness.encode import EncoderSpec, cache_key
from harness.errors import DataError, UnknownNameError
from harness.groundtruth import exact_knn
from harness.loaders import (
    build_raw,
    download_file,
    load_dataset,
    manifest_for,
    read_idx,
    text_collection,
)
from harness.manifest import manifests
from harness.prompts import default_prompts
from tests.conftest import clustered


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VECBUDGET_CACHE", str(root))
    return root


@pytest.fixture
def manifest_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    monkeypatch.setenv("VECBUDGET_MANIFESTS", str(d))
    return d


def cache_is_clean(root: Path) -> bool:
    """No prepared folder and no temporary leftovers anywhere under the cache."""
    if not root.exists():
        return True
    return not [p for p in root.rglob("*") if p.is_file()]


def gt_ids(base: np.ndarray, queries: np.ndarray, k: int = 10, metric: str = "l2") -> np.ndarray:
    return exact_knn(np.asarray(base, np.float32), np.asarray(queries, np.float32), k, metric)[1]


# ------------------------------------------------------------------------------------------
# round trips


def test_texmex_folder_round_trips_and_its_shipped_neighbours_verify(tmp_path, cache):
    base, queries = clustered(500, 16, 12, seed=1)
    folder = tmp_path / "sift-toy"
    formats.write_vectors(folder / "base.fvecs", base)
    formats.write_vectors(folder / "queries.fvecs", queries)
    formats.write_vectors(folder / "neighbors.ivecs", gt_ids(base, queries))
    raw = build_raw(manifest_for(str(folder)), progress=False)
    assert not raw.base.flags.owndata  # memory-mapped view, not a loaded copy
    ds = load_dataset(str(folder), progress=False)
    assert (ds.n, ds.dim, ds.nq, ds.metric) == (500, 16, 12, "l2")
    np.testing.assert_array_equal(ds.base, base)
    np.testing.assert_array_equal(ds.queries, queries)
    assert ds.meta["shipped_gt"]["rows_equal_up_to_ties"] == 12
    np.testing.assert_array_equal(ds.gt_ids[:, :10], gt_ids(base, queries))


def test_bvecs_uint8_base_is_converted_exactly(tmp_path, cache):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    queries = base[:5]
    folder = tmp_path / "bytes"
    formats.write_vectors(folder / "base.bvecs", base)
    formats.write_vectors(folder / "queries.bvecs", queries)
    ds = load_dataset(str(folder), progress=False)
    np.testing.assert_array_equal(ds.base, base.astype(np.float32))
    assert ds.meta["source_dtype"] == "uint8"
    assert (ds.gt_dist[:, 0] == 0).all()  # self-queries


def test_bigann_files_round_trip_with_a_bigann_ground_truth_file(tmp_path, cache):
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, size=(400, 12), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(7, 12), dtype=np.uint8)
    folder = tmp_path / "bigann-toy"
    formats.write_vectors(folder / "base.u8bin", base)
    formats.write_vectors(folder / "queries.u8bin", queries)
    d, i = exact_knn(base.astype(np.float32), queries.astype(np.float32), 10, "l2")
    formats.write_bigann_groundtruth(folder / "groundtruth.bin", i, np.sqrt(d))
    m = manifest_for(str(folder))
    assert m.options["neighbors"] == "groundtruth.bin"
    ds = load_dataset(str(folder), progress=False)
    np.testing.assert_array_equal(ds.base, base)
    assert ds.meta["shipped_gt"]["rows_equal_up_to_ties"] == 7


def test_hdf5_file_round_trips_with_metric_from_its_distance_attribute(tmp_path, cache):
    base, queries = clustered(400, 10, 9, seed=3)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    qunit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    file = tmp_path / "toy-10-angular.hdf5"
    formats.write_ann_hdf5(file, base, queries, gt_ids(unit, qunit, 10, "ip"), metric="cosine")
    ds = load_dataset(str(file), progress=False)
    assert ds.metric == "cosine" and ds.method_metric == "ip" and ds.name == "toy-10-angular"
    np.testing.assert_allclose(ds.base, unit, rtol=1e-6)
    assert ds.meta["shipped_gt"]["rows_equal_up_to_ties"] == 9
    with pytest.raises(DataError, match="means metric 'cosine', but data set toy-10-angular declares metric 'l2'"):
        load_dataset(str(file), overrides={"metric": "l2"}, progress=False)


def test_hdf5_shipped_neighbours_that_are_wrong_are_reported(tmp_path, cache):
    base, queries = clustered(300, 6, 8, seed=4)
    nb = gt_ids(base, queries)
    nb[3] = nb[3][::-1]  # a wrong order (distances are distinct)
    file = tmp_path / "wrong.hdf5"
    formats.write_ann_hdf5(file, base, queries, nb, metric="euclidean")
    with pytest.warns(DataWarning, match=r"agree with the recomputed exact ground truth on only 7 of 8"):
        ds = load_dataset(str(file), progress=False)
    assert ds.meta["shipped_gt"]["rows_equal_up_to_ties"] == 7
    assert "7 of 8 checked rows" in ds.meta["shipped_gt"]["warning"]


def test_manifest_with_npz_parquet_and_table_file_options(tmp_path, cache, manifest_dir):
    base, queries = clustered(200, 6, 5, seed=5)
    folder = tmp_path / "mixed"
    formats.write_vectors(folder / "vectors.npz", base, key="docs")
    formats.write_vectors(folder / "q.parquet", queries)
    formats.write_vectors(folder / "train.fbin", queries[::-1])
    (manifest_dir / "mixed.toml").write_text(f'''
name = "mixed"
format = "vectors"
metric = "ip"
path = "{folder}"
dim = 6

[options]
base = {{ file = "vectors.npz", key = "docs" }}
queries = "q.parquet"
train_queries = "train.fbin"
''')
    assert "mixed" in manifests()
    ds = load_dataset("mixed", progress=False)
    np.testing.assert_array_equal(ds.base, base)
    np.testing.assert_array_equal(ds.queries, queries)
    np.testing.assert_array_equal(ds.train_queries, queries[::-1])
    (manifest_dir / "mixed.toml").write_text((manifest_dir / "mixed.toml").read_text().replace("dim = 6", "dim = 7"))
    with pytest.raises(DataError, match="vectors have 6 dimensions but its manifest .* declares dim = 7"):
        load_dataset("mixed", progress=False)


def test_manifest_errors_are_clear(manifest_dir):
    (manifest_dir / "a.toml").write_text('name = "a"\nformat = "vectors"\nmetric = "l2"\ncolour = "red"\n')
    with pytest.raises(DataError, match="unknown key\\(s\\) colour"):
        manifests()
    (manifest_dir / "a.toml").write_text('name = "bigann10k"\nformat = "vectors"\nmetric = "l2"\n')
    with pytest.raises(DataError, match="declared twice"):
        manifests()
    (manifest_dir / "a.toml").unlink()
    with pytest.raises(UnknownNameError, match="valid data sets: .*bigann10k"):
        manifest_for("no-such-set")


# ------------------------------------------------------------------------------------------
# memory-mapped preparation


class ChunkOnly:
    """An array stand-in that allows row slices of at most ``limit`` rows and no whole reads."""

    def __init__(self, x: np.ndarray, limit: int):
        self.x, self.limit = x, limit
        self.shape, self.dtype, self.ndim = x.shape, x.dtype, x.ndim

    def __getitem__(self, idx):
        assert isinstance(idx, slice), f"only row slices allowed, got {idx!r}"
        start, stop, _ = idx.indices(self.x.shape[0])
        assert stop - start <= self.limit, f"read {stop - start} rows at once"
        return self.x[idx]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole base was converted to an array")


def test_prepare_streams_a_large_base_in_chunks(tmp_path, monkeypatch):
    base, queries = clustered(5000, 8, 6, seed=6)
    expected = prepare(RawDataset("whole", base, queries, "cosine"), tmp_path / "a", progress=False)
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 700)
    raw = RawDataset("whole", ChunkOnly(base, 700), queries, "cosine")
    ds = prepare(raw, tmp_path / "b", progress=False)
    assert ds.fingerprint == expected.fingerprint  # chunking does not change the content hash
    np.testing.assert_array_equal(ds.base, expected.base)
    np.testing.assert_array_equal(ds.gt_ids, expected.gt_ids)


def test_a_failure_during_prepare_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    base, queries = clustered(300, 8, 5)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset_mod, "exact_knn", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(RawDataset("x", base, queries, "l2"), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_shipped_ground_truth_is_checked_on_a_sample_of_queries():
    rng = np.random.default_rng(0)
    gt = np.argsort(rng.random((3000, 50)), axis=1)[:, :20]
    dist = np.sort(rng.random((3000, 20)), axis=1)
    shipped = gt.copy()
    shipped[:, [0, 1]] = shipped[:, [1, 0]]  # every row wrong
    with pytest.warns(DataWarning, match=r"only 0 of 500 checked rows \(0%"):
        out = verify_shipped(shipped, gt, dist, sample=500)
    assert out["rows_checked"] == 500 and out["rows"] == 3000 and out["rows_equal_up_to_ties"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        good = verify_shipped(gt, gt, dist, sample=500)
    assert good["rows_equal_up_to_ties"] == 500 and "warning" not in good


# ------------------------------------------------------------------------------------------
# bad input through the loaders: a clear message naming the file, nothing in the cache


def toy_folder(tmp_path: Path, suffix: str = ".fvecs", **arrays: np.ndarray) -> Path:
    base, queries = clustered(200, 8, 6, seed=7)
    data = {"base": base, "queries": queries, **arrays}
    folder = tmp_path / "bad"
    for stem, arr in data.items():
        formats.write_vectors(folder / f"{stem}{suffix}", arr)
    return folder


def truncate(file: Path, drop: int) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - drop])


def test_truncated_fvecs(tmp_path, cache):
    folder = toy_folder(tmp_path)
    truncate(folder / "base.fvecs", 10)
    with pytest.raises(DataError, match=r"base\.fvecs: truncated or corrupt"):
        load_dataset(str(folder), progress=False)
    assert cache_is_clean(cache)


def test_truncated_u8bin(tmp_path, cache):
    rng = np.random.default_rng(0)
    folder = toy_folder(tmp_path, ".u8bin", base=rng.integers(0, 255, (50, 4), dtype=np.uint8),
                        queries=rng.integers(0, 255, (3, 4), dtype=np.uint8))
    truncate(folder / "base.u8bin", 7)
    with pytest.raises(DataError, match=r"base\.u8bin: truncated — header declares n=50, d=4"):
        load_dataset(str(folder), progress=False)
    assert cache_is_clean(cache)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_hdf5(tmp_path, cache, damage):
    base, queries = clustered(200, 8, 5)
    file = formats.write_ann_hdf5(tmp_path / "toy.hdf5", base, queries, metric="euclidean")
    if damage == "truncate":
        truncate(file, file.stat().st_size // 2)
    else:
        file.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"toy\.hdf5.*(corrupt or truncated|truncated)"):
        load_dataset(str(file), progress=False)
    assert cache_is_clean(cache)


def test_dimension_mismatch_names_both_files(tmp_path, cache):
    folder = toy_folder(tmp_path, queries=np.ones((4, 5), np.float32))
    with pytest.raises(DataError, match=r"queries\.fvecs: dimension 5 does not match the base dimension 8 \(.*base\.fvecs\)"):
        load_dataset(str(folder), progress=False)
    assert cache_is_clean(cache)


def test_nan_rows_are_counted_with_the_first_row(tmp_path, cache):
    base, _ = clustered(200, 8, 6)
    base[[11, 40]] = np.nan
    folder = toy_folder(tmp_path, ".fbin", base=base)
    with pytest.raises(DataError, match=r"base\.fbin: 2 rows of 200 contain NaN or infinite values \(first at row 11\)"):
        load_dataset(str(folder), progress=False)
    assert cache_is_clean(cache)


def test_empty_query_split(tmp_path, cache):
    folder = toy_folder(tmp_path, ".npy", queries=np.zeros((0, 8), np.float32))
    with pytest.raises(DataError, match=r"queries\.npy: empty"):
        load_dataset(str(folder), progress=False)
    assert cache_is_clean(cache)


def beir_folder(root: Path, *, qrels: str = "q1\td1\t1\nq2\td2\t2\n", docs: int = 4) -> Path:
    folder = root / "tinybeir"
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i in range(1, docs + 1):
            f.write(json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": f"document number {i}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i in (1, 2):
            f.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("q1\tnope\t1\n", r"qrels/test\.tsv: names 1 document id\(s\) not in corpus\.jsonl, e\.g\. 'nope' \(query 'q1'\)"),
        ("q9\td1\t1\n", r"qrels/test\.tsv: names query id 'q9', which is not in queries\.jsonl"),
        ("", r"qrels/test\.tsv: empty split 'test'"),
    ],
)
def test_bad_beir_qrels_fail_before_any_encoding(tmp_path, cache, qrels, message):
    folder = beir_folder(tmp_path, qrels=qrels)
    with pytest.raises(DataError, match=message):
        load_dataset(str(folder), progress=False)
    assert cache_is_clean(cache)


def test_unknown_qrels_can_be_dropped_on_request(tmp_path, cache):
    folder = beir_folder(tmp_path, qrels="q1\td1\t1\nq1\tnope\t1\nq2\tgone\t1\n")
    m = manifest_for(str(folder), {"allow_unknown_qrels": True})
    col = text_collection(m, progress=False)
    assert col.qrels == {"q1": {"d1": 1}} and col.query_ids == ["q1"]


# ------------------------------------------------------------------------------------------
# downloads


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hdf5_manifest(manifest_dir: Path, url: str, name: str = "remote") -> None:
    (manifest_dir / f"{name}.toml").write_text(
        f'name = "{name}"\nformat = "hdf5"\nmetric = "l2"\nurl = "{url}"\ndim = 8\n'
    )


def test_hdf5_download_from_a_local_server(tmp_path, cache, manifest_dir, server):
    root, url = server
    base, queries = clustered(300, 8, 5)
    formats.write_ann_hdf5(root / "toy-8-euclidean.hdf5", base, queries, gt_ids(base, queries), metric="euclidean")
    hdf5_manifest(manifest_dir, f"{url}/toy-8-euclidean.hdf5")
    ds = load_dataset("remote", progress=False)
    np.testing.assert_array_equal(ds.base, base)
    assert ds.meta["shipped_gt"]["rows_equal_up_to_ties"] == 5
    assert (cache / "downloads" / "toy-8-euclidean.hdf5").exists()
    (root / "toy-8-euclidean.hdf5").unlink()  # cached: no second download
    assert load_dataset("remote", progress=False).path == ds.path


@pytest.mark.parametrize("where", ["refused", "missing-file", "http-404"])
def test_failed_downloads_are_clear_and_leave_nothing(tmp_path, cache, manifest_dir, server, where):
    _, url = server
    target = {"refused": f"http://127.0.0.1:{closed_port()}/x.hdf5",
              "missing-file": (tmp_path / "nowhere" / "x.hdf5").as_uri(),
              "http-404": f"{url}/x.hdf5"}[where]
    hdf5_manifest(manifest_dir, target)
    with pytest.raises(DataError, match=rf"could not download {target}: .*place it at .*downloads/x\.hdf5"):
        load_dataset("remote", progress=False)
    assert cache_is_clean(cache)


def test_a_corrupt_download_is_removed(tmp_path, cache, manifest_dir, server):
    root, url = server
    (root / "bad.hdf5").write_bytes(b"this is not an HDF5 file" * 100)
    hdf5_manifest(manifest_dir, f"{url}/bad.hdf5")
    with pytest.raises(DataError, match=r"bad\.hdf5: corrupt or truncated HDF5 file .*downloaded file was removed"):
        load_dataset("remote", progress=False)
    assert cache_is_clean(cache)


def test_download_file_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 5000)
    dest = tmp_path / "d" / "copy.bin"
    download_file(src.as_uri(), dest, progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]


def test_beir_download_with_beirs_utility_from_a_local_server(tmp_path, cache, manifest_dir, server):
    root, url = server
    folder = beir_folder(tmp_path / "src")
    with zipfile.ZipFile(root / "tinybeir.zip", "w") as z:
        for f in folder.rglob("*"):
            z.write(f, f.relative_to(folder.parent))
    (manifest_dir / "tinybeir.toml").write_text(
        f'name = "tinybeir"\nformat = "beir"\nmetric = "cosine"\nurl = "{url}/tinybeir.zip"\n'
        '[options]\nbeir_name = "tinybeir"\n'
    )
    col = text_collection(manifest_for("tinybeir"), progress=False)
    assert col.doc_ids == ["d1", "d2", "d3", "d4"] and col.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert col.doc_texts[0] == "title 1 document number 1"
    assert sorted(p.name for p in (cache / "beir").iterdir()) == ["tinybeir"]
    (manifest_dir / "tinybeir.toml").write_text(
        (manifest_dir / "tinybeir.toml").read_text().replace("tinybeir.zip", "missing.zip"))
    shutil.rmtree(cache)
    with pytest.raises(DataError, match=r"could not download BEIR collection 'tinybeir' from .*/missing\.zip: "
                                        r"File is not a zip file\. Without network, .* unzip it to .*beir/tinybeir"):
        text_collection(manifest_for("tinybeir"), progress=False)
    assert cache_is_clean(cache)


# ------------------------------------------------------------------------------------------
# encoders and prompts


def test_prompt_registry_gives_known_models_their_prompts():
    assert default_prompts("intfloat/e5-small-v2") == ("query: ", "passage: ")
    assert default_prompts("/models/multilingual-e5-base") == ("query: ", "passage: ")
    assert default_prompts("nomic-ai/nomic-embed-text-v1.5") == ("search_query: ", "search_document: ")
    assert default_prompts("BAAI/bge-small-en-v1.5")[0].startswith("Represent this sentence")
    assert default_prompts("all-MiniLM-L6-v2") == ("", "")
    assert default_prompts("someone/unknown-model") == ("", "")
    spec = EncoderSpec.from_options({"model": "intfloat/e5-base-v2"})
    assert (spec.query_prompt, spec.document_prompt) == ("query: ", "passage: ")
    assert EncoderSpec.from_options({"model": "intfloat/e5-base-v2", "query_prompt": ""}).query_prompt == ""
    assert EncoderSpec.from_options({"model": "nomic-ai/nomic-embed-text-v1"}).trust_remote_code
    with pytest.raises(DataError, match="unknown encoder option\\(s\\) dropout"):
        EncoderSpec.from_options({"dropout": 0.1})
    with pytest.raises(DataError, match="max_length must be a positive integer"):
        EncoderSpec.from_options({"max_length": 0})


def test_prompts_and_models_are_part_of_the_embedding_cache_key():
    texts = ["a", "b"]
    plain = EncoderSpec()
    assert cache_key(texts, plain, "query") == cache_key(texts, plain, "document")
    e5 = EncoderSpec.from_options({"model": "intfloat/e5-small-v2"})
    assert cache_key(texts, e5, "query") != cache_key(texts, e5, "document")
    assert cache_key(texts, plain, "query") != cache_key(texts, EncoderSpec(query_prompt="query: "), "query")
    # how the model loads is not part of what it computes
    assert cache_key(texts, plain, "query") == cache_key(texts, EncoderSpec(trust_remote_code=True), "query")


def test_encoder_overrides_apply_to_text_data_sets_only(shared_data):
    m = manifest_for("scifact", {"model": "intfloat/e5-small-v2", "batch_size": 8})
    assert m.encoder == {"model": "intfloat/e5-small-v2", "max_length": 256, "batch_size": 8}
    assert m.dim is None  # another model, another dimension
    m = manifest_for("scifact", {"query_prompt": "q: "})
    assert m.encoder["query_prompt"] == "q: " and m.dim == 384
    with pytest.raises(DataError, match="encoder options \\(model\\) apply only to text data sets"):
        manifest_for("bigann10k", {"model": "intfloat/e5-small-v2"})


# ------------------------------------------------------------------------------------------
# synthetic, WordNet lemmas, IDX


def test_synthetic_gaussian_and_ood_manifests(cache, manifest_dir):
    for name, shift in (("g-in", 0.0), ("g-ood", 0.6)):
        (manifest_dir / f"{name}.toml").write_text(
            f'name = "{name}"\nformat = "synthetic"\nmetric = "l2"\n[options]\nkind = "gaussian"\n'
            f"n = 3000\nnq = 40\ntrain_queries = 10\ndim = 32\nintrinsic_dim = 4\nquery_shift = {shift}\n"
        )
    a = load_dataset("g-in", progress=False)
    b = load_dataset("g-ood", progress=False)
    assert (a.n, a.dim, a.nq, a.train_queries.shape) == (3000, 32, 40, (10, 32))
    np.testing.assert_array_equal(a.base, b.base)  # same documents, shifted queries
    sa, sb = a.stats(k=10, sample=300), b.stats(k=10, sample=300)
    assert sa["lid"]["base_mean"] < 8  # intrinsic dimension 4 in 32-d space
    assert sb["shift"]["query_residual_90"] > 0.4 > sa["shift"]["query_residual_90"]
    assert (a.path / "stats-k10-s300-r0.json").exists()
    (manifest_dir / "g-bad.toml").write_text(
        'name = "g-bad"\nformat = "synthetic"\nmetric = "l2"\n[options]\nkind = "gaussian"\nwidth = 3\n')
    with pytest.raises(DataError, match="unknown gaussian option\\(s\\) width"):
        load_dataset("g-bad", progress=False)


def test_limit_manifest_builds_all_pairs_with_qrels(cache, manifest_dir):
    pytest.importorskip("torch")
    (manifest_dir / "lim.toml").write_text(
        'name = "lim"\nformat = "synthetic"\nmetric = "ip"\n[options]\nkind = "limit"\nn_docs = 8\nk = 2\ndim = 6\n'
    )
    ds = load_dataset("lim", progress=False)
    assert (ds.n, ds.nq, ds.dim) == (8, 28, 6)
    assert ds.qrels["q0"] == {"d0": 1, "d1": 1} and ds.qrels["q27"] == {"d6": 1, "d7": 1}
    top2 = {tuple(sorted(r)) for r in ds.gt_ids[:, :2].tolist()}
    assert len(top2) == 28  # free embeddings realise every pair at d=6 for n=8


def test_wordnet_lemmas_are_the_ood_twin_of_wordnet():
    from harness.loaders import _synsets
    from harness.wordnet import DEBIAN_DIR

    if not (DEBIAN_DIR / "data.noun").exists():
        pytest.skip("wordnet-base not installed")
    small = {"documents": 3000, "queries": 50, "train_queries": 20}
    lem = text_collection(manifest_for("wordnet-lemmas", small), progress=False)
    ex = text_collection(manifest_for("wordnet", small), progress=False)
    assert lem.doc_ids == ex.doc_ids and lem.doc_texts == ex.doc_texts
    assert [next(iter(r)) for r in lem.qrels.values()] == [next(iter(r)) for r in ex.qrels.values()]
    synsets = {s.id: s for s in _synsets(DEBIAN_DIR)}
    docs = set(lem.doc_ids)
    for qid, text in zip(lem.query_ids, lem.query_texts, strict=True):
        (sid,) = lem.qrels[qid]
        assert sid in docs and text == ", ".join(synsets[sid].lemmas)
    assert np.mean([len(t.split()) for t in lem.query_texts]) < np.mean([len(t.split()) for t in ex.query_texts])
    assert len(lem.train_query_texts) == 20


def write_idx(path: Path, arr: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_idx_reader_and_truncation(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "x-images-idx3-ubyte.gz", imgs)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-images-idx3-ubyte.gz"), imgs.reshape(20, 12))
    with gzip.open(tmp_path / "t.gz", "wb") as f:
        f.write((tmp_path / "x-images-idx3-ubyte.gz").read_bytes()[:0] + bytes([0, 0, 8, 3]) + (20).to_bytes(4, "big")
                + (4).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x00" * 100)
    with pytest.raises(DataError, match=r"t\.gz: truncated or corrupt — header declares shape \[20, 4, 3\]"):
        read_idx(tmp_path / "t.gz")


def test_debian_fashion_mnist_files_load():
    m = manifest_for("fashion-mnist-debian")
    if not m.path.exists():
        pytest.skip("dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    raw = build_raw(m, progress=False)
    assert raw.base.shape == (60000, 784) and raw.queries.shape == (10000, 784)
    assert raw.base.dtype == np.uint8 and raw.metric == "l2"


# ------------------------------------------------------------------------------------------
# odd BEIR data: no silent losses, every quiet oddity counted


def test_qrels_without_a_header_line_keep_their_first_judgment(tmp_path, cache):
    folder = beir_folder(tmp_path)
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td2\t2\n")  # no header line
    col = beir_data.load(folder)
    assert col.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}} and col.query_ids == ["q1", "q2"]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n")
    assert beir_data.load(folder).qrels == col.qrels  # a header is still skipped


@pytest.mark.parametrize(("bad", "message"), [
    ('{"_id": "d11", "text": "unterminated\n', r"corpus\.jsonl: line 11 is not valid JSON"),
    ("\n", r"corpus\.jsonl: line 11 is blank"),
])
def test_a_malformed_corpus_line_is_named_by_file_and_line(tmp_path, cache, bad, message):
    folder = beir_folder(tmp_path, docs=12)
    lines = (folder / "corpus.jsonl").read_text().splitlines(keepends=True)
    lines[10] = bad
    (folder / "corpus.jsonl").write_text("".join(lines))
    with pytest.raises(DataError, match=message):
        beir_data.load(folder)


def test_a_malformed_query_line_is_named_by_file_and_line(tmp_path, cache):
    folder = beir_folder(tmp_path)
    with open(folder / "queries.jsonl", "a") as f:
        f.write("{not json}\n")
    with pytest.raises(DataError, match=r"queries\.jsonl: line 3 is not valid JSON"):
        beir_data.load(folder)


def test_quiet_oddities_in_a_beir_folder_are_warned_with_counts(tmp_path, cache):
    folder = beir_folder(tmp_path, docs=6, qrels="q1\td1\t1\nq1\td1\t1\nq2\td2\t0\n")
    with open(folder / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d7", "title": "", "text": " "}) + "\n")
        f.write(json.dumps({"_id": "d8", "title": "", "text": ""}) + "\n")
        f.write(json.dumps({"_id": "d3", "title": "again", "text": "a repeated id"}) + "\n")
    with open(folder / "queries.jsonl", "a") as f:
        f.write(json.dumps({"_id": "q1", "text": "   "}) + "\n")  # q1 again, and empty
    with pytest.warns(DataWarning) as caught:
        col = beir_data.load(folder)
    messages = [str(w.message) for w in caught]
    expected = [
        r"corpus\.jsonl: 1 line\(s\) repeat the id of an earlier document \(1 id\(s\), e\.g\. 'd3'\)",
        r"queries\.jsonl: 1 test query id\(s\) occur on more than one line \(e\.g\. 'q1'\)",
        r"qrels/test\.tsv: 1 row\(s\) repeat an earlier \(query, document\) pair",
        r"2 of 8 documents \(title and text\) are empty \(e\.g\. 'd7', 'd8'\)",
        r"1 of 2 test queries are empty \(e\.g\. 'q1'\)",
        r"1 of 2 test queries have no positive judgment \(e\.g\. 'q2'\)",
    ]
    for pattern in expected:
        assert any(re.search(pattern, m) for m in messages), (pattern, messages)
    assert len(col.doc_ids) == 8
    beir_folder(tmp_path / "clean")  # a clean folder loads without a word
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        beir_data.load(tmp_path / "clean" / "tinybeir")


def test_beir_progress_bars_are_labelled(tmp_path, cache, capsys):
    beir_data.load(beir_folder(tmp_path), progress=True)
    err = capsys.readouterr().err
    assert "read tinybeir corpus.jsonl [test]" in err
    assert not [line for line in err.replace("\r", "\n").splitlines() if line.lstrip().startswith(("0%", "100%"))]
