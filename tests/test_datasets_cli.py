"""`vecbudget datasets list | prepare | info`, encoder options of `run`, and bad input via the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cli
from harness import formats
from harness.groundtruth import exact_knn
from harness.loaders import manifest_for
from harness.manifest import MANIFEST_DIR
from tests.conftest import clustered

REPO = Path(__file__).resolve().parents[1]
REPO_CACHE = REPO / "datasets" / "cache"


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``cli.main`` in-process (as ``python cli.py ...`` would) → (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


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


def empty(root: Path) -> bool:
    return not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


def test_list_shows_every_manifest_with_its_status(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(p.stem for p in MANIFEST_DIR.glob("*.toml"))
    for name in ("scifact", "nfcorpus", "glove-100-angular", "sift-128-euclidean", "wordnet-lemmas",
                 "fashion-mnist-debian", "synthetic-gmm", "limit-small"):
        assert name in names
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "[hdf5, cosine]" in rows["glove-100-angular"] and "generated" in rows["limit-small"]
    assert "[wordnet-lemmas, cosine]" in rows["wordnet-lemmas"]


def test_prepare_a_texmex_folder(tmp_path, cache, monkeypatch, capsys):
    base, queries = clustered(400, 8, 6)
    folder = tmp_path / "toy"
    formats.write_vectors(folder / "base.fvecs", base)
    formats.write_vectors(folder / "queries.fvecs", queries)
    formats.write_vectors(folder / "neighbors.ivecs", exact_knn(base, queries, 20, "l2")[1])
    code, out, err = run_cli(monkeypatch, capsys, "datasets", "prepare", str(folder), "-q")
    assert code == 0, err
    assert "toy: n=400 d=8 queries=6 metric=l2 ground truth top-128" in out
    assert "shipped neighbours: 6/6 checked rows equal" in out
    assert len([p for p in cache.iterdir() if p.name.startswith("toy-")]) == 1


# ------------------------------------------------------------------------------------------
# bad input: exit status 2, a message naming the file and the problem, nothing in the cache


def bad_fvecs_folder(tmp_path: Path, base=None, queries=None, suffix=".fvecs") -> Path:
    b, q = clustered(200, 8, 5)
    folder = tmp_path / "bad"
    formats.write_vectors(folder / f"base{suffix}", b if base is None else base)
    formats.write_vectors(folder / f"queries{suffix}", q if queries is None else queries)
    return folder


def make_truncated_fvecs(tmp_path):
    folder = bad_fvecs_folder(tmp_path)
    f = folder / "base.fvecs"
    f.write_bytes(f.read_bytes()[:-13])
    return folder, r"base\.fvecs: truncated or corrupt"


def make_corrupt_hdf5(tmp_path):
    b, q = clustered(200, 8, 5)
    f = formats.write_ann_hdf5(tmp_path / "broken.hdf5", b, q, metric="euclidean")
    f.write_bytes(f.read_bytes()[:3000])
    return f, r"broken\.hdf5: corrupt or truncated HDF5"


def make_truncated_u8bin(tmp_path):
    rng = np.random.default_rng(0)
    folder = bad_fvecs_folder(tmp_path, rng.integers(0, 255, (100, 4), dtype=np.uint8),
                              rng.integers(0, 255, (5, 4), dtype=np.uint8), ".u8bin")
    f = folder / "base.u8bin"
    f.write_bytes(f.read_bytes()[:-100])
    return folder, r"base\.u8bin: truncated — header declares n=100, d=4"


def make_dim_mismatch(tmp_path):
    return bad_fvecs_folder(tmp_path, queries=np.ones((3, 6), np.float32)), \
        r"queries\.fvecs: dimension 6 does not match the base dimension 8"


def make_nan_rows(tmp_path):
    b, _ = clustered(200, 8, 5)
    b[57] = np.inf
    return bad_fvecs_folder(tmp_path, base=b, suffix=".fbin"), \
        r"base\.fbin: 1 row of 200 contains? NaN or infinite values \(first at row 57\)"


def make_empty_split(tmp_path):
    return bad_fvecs_folder(tmp_path, queries=np.zeros((0, 8), np.float32), suffix=".npy"), r"queries\.npy: empty"


def make_unknown_qrels(tmp_path):
    folder = tmp_path / "beirbad"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "a document"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td7\t1\n")
    return folder, r"qrels/test\.tsv: names 1 document id\(s\) not in corpus\.jsonl, e\.g\. 'd7'"


@pytest.mark.parametrize(
    "make",
    [make_truncated_fvecs, make_corrupt_hdf5, make_truncated_u8bin, make_dim_mismatch, make_nan_rows,
     make_empty_split, make_unknown_qrels],
    ids=lambda f: f.__name__[5:],
)
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(tmp_path, cache, monkeypatch, capsys, make):
    target, message = make(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "datasets", "prepare", str(target), "-q")
    assert code == 2, out + err
    assert err.startswith("error: ") and str(tmp_path) in err
    assert re.search(message, err), err
    assert empty(cache)


def test_bad_input_through_a_real_process(tmp_path):
    target, _ = make_corrupt_hdf5(tmp_path)
    out = subprocess.run([sys.executable, "cli.py", "datasets", "prepare", str(target), "-q"], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VECBUDGET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2
    assert f"error: {target}: corrupt or truncated HDF5 file" in out.stderr
    assert empty(tmp_path / "cache")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-d", "bigann10k", "-m", "exact", "--model", "intfloat/e5-small-v2"],
         "encoder options (model) apply only to text data sets"),
        (["run", "-d", "scifact", "-m", "exact", "--max-length", "0"], "--max-length must be a positive integer"),
        (["datasets", "prepare", "no-such-set"], "unknown data set 'no-such-set'; valid data sets: "),
        (["datasets", "info", "bigann10k", "--lid-k", "1"], "--lid-k must be at least 2"),
    ],
)
def test_encoder_and_dataset_options_are_checked(tmp_path, cache, monkeypatch, capsys, args, message, shared_data):
    code, out, err = run_cli(monkeypatch, capsys, *args, "--results-dir", str(tmp_path)) if args[0] == "run" \
        else run_cli(monkeypatch, capsys, *args)
    assert code == 2 and message in err, out + err


# ------------------------------------------------------------------------------------------
# info


def test_info_bigann10k_reports_ground_truth_lid_norms_and_shift(cache, monkeypatch, capsys, shared_data):
    code, out, err = run_cli(monkeypatch, capsys, "datasets", "info", "bigann10k", "-q")
    assert code == 0, err
    for text in ("format:", "vectors", "licence:", "n (documents/base):", "10,000", "d:", "128",
                 "nq (test queries):", "100", "source dtype:", "uint8",
                 "shipped neighbours:", "100/100 checked rows equal up to ties",
                 "LID base:", "LID queries:", "norms base:", "mean shift:", "NN distance ratio:",
                 "queries in base:", "100.0%"):
        assert text in out, text
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "info", "bigann10k", "-q", "--json")
    info = json.loads(out)
    assert (info["n"], info["dim"], info["nq"], info["metric"]) == (10000, 128, 100, "l2")
    lid = info["stats"]["lid"]
    assert lid["k"] == 20 and 5 < lid["base_mean"] < 50 and lid["base_skipped"] == 0
    assert 500 < info["stats"]["norms"]["base"]["mean"] < 520  # SIFT descriptors have norm ~512
    assert info["shipped_gt"]["rows_equal_up_to_ties"] == 100


def test_info_flags_out_of_distribution_queries(cache, manifest_dir, monkeypatch, capsys):
    for name, shift in (("gin", 0.0), ("gout", 0.7)):
        (manifest_dir / f"{name}.toml").write_text(
            f'name = "{name}"\nformat = "synthetic"\nmetric = "cosine"\ntags = ["ood"]\n[options]\n'
            f'kind = "gaussian"\nn = 4000\nnq = 60\ndim = 48\nintrinsic_dim = 6\nquery_shift = {shift}\n')
    shifts = {}
    for name in ("gin", "gout"):
        code, out, err = run_cli(monkeypatch, capsys, "datasets", "info", name, "-q", "--json", "--sample", "500")
        assert code == 0, err
        shifts[name] = json.loads(out)["stats"]["shift"]
    assert shifts["gin"]["nn1_ratio"] < 1.5 < shifts["gout"]["nn1_ratio"]
    assert shifts["gin"]["query_residual_90"] < 0.3 < shifts["gout"]["query_residual_90"]
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "info", "gout", "-q", "--sample", "500")
    assert "tags:" in out and "ood" in out and "residual off 90% subsp.:" in out


def encoded_in_repo_cache(name: str) -> bool:
    """Whether a text data set is already prepared (so encoded) in the shared cache."""
    model = manifest_for(name).encoder.get("model")
    for meta in REPO_CACHE.glob(f"{name}-*/meta.json"):
        info = json.loads(meta.read_text()).get("info", {})
        if info.get("encoder", {}).get("model") == model:
            return True
    return False


@pytest.mark.parametrize(("name", "n", "nq", "extra"), [
    ("scifact", "5,183", "300", "judged queries:"),
    ("wordnet-lemmas", "20,000", "5,000", "ood"),
])
def test_info_on_encoded_text_sets_if_cached(monkeypatch, capsys, name, n, nq, extra, shared_data):
    monkeypatch.delenv("VECBUDGET_CACHE", raising=False)
    if not encoded_in_repo_cache(name):
        pytest.skip(f"{name} is not encoded yet in {REPO_CACHE} (vecbudget datasets prepare {name})")
    code, out, err = run_cli(monkeypatch, capsys, "datasets", "info", name, "-q")
    assert code == 0, err
    for text in (f"n (documents/base):       {n}", "d:                        384",
                 f"nq (test queries):        {nq}", "metric:                   cosine", "model='all-MiniLM-L6-v2'",
                 "LID base:", "mean shift:", "norms base:               mean 1", extra):
        assert text in out, text
