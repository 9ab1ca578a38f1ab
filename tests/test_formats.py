"""Vector file formats: round trips made in tmp_path, memory mapping, and every bad-input message."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DataError
from harness.formats import (
    check_same_dim,
    read_ann_hdf5,
    read_bigann,
    read_bigann_groundtruth,
    read_vectors,
    validate_vectors,
    write_ann_hdf5,
    write_bigann_groundtruth,
    write_parquet,
    write_vectors,
)

RNG = np.random.default_rng(7)
F32 = RNG.normal(size=(37, 12)).astype(np.float32)
U8 = RNG.integers(0, 256, size=(37, 12)).astype(np.uint8)
I8 = RNG.integers(-128, 128, size=(37, 12)).astype(np.int8)
I32 = RNG.integers(-(2**31), 2**31 - 1, size=(37, 12)).astype(np.int32)

CASES = {
    ".fvecs": F32,
    ".bvecs": U8,
    ".ivecs": I32,
    ".fbin": F32,
    ".u8bin": U8,
    ".i8bin": I8,
    ".ibin": I32,
    ".npy": F32,
    ".npz": F32,
    ".parquet": F32,
    ".hdf5": F32,
}
MEMMAPPED = {".fvecs", ".bvecs", ".ivecs", ".fbin", ".u8bin", ".i8bin", ".ibin", ".npy", ".hdf5"}


def _raises(match_parts: list[str], fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    for part in match_parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("suffix", sorted(CASES))
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    x = CASES[suffix]
    path = write_vectors(tmp_path / f"vecs{suffix}", x)
    got = read_vectors(path)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(read_vectors(path, start=5, stop=9), x[5:9])
    np.testing.assert_array_equal(read_vectors(path, mmap=False), x)
    if suffix in MEMMAPPED:
        assert isinstance(got, np.memmap)
    assert _leftovers(tmp_path) == []


def test_texmex_is_a_strided_view_of_the_file(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "a.fvecs", F32)
    x = read_vectors(path)
    assert isinstance(x, np.memmap) and x.strides == (4 + 12 * 4, 4)
    raw = np.fromfile(path, dtype="<f4").reshape(37, 13)
    np.testing.assert_array_equal(raw[:, 1:], F32)
    assert (raw[:, 0].view("<i4") == 12).all()


def test_bigann_layout_and_row_range(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "a.u8bin", U8)
    assert path.stat().st_size == 8 + U8.size
    assert np.fromfile(path, dtype="<u4", count=2).tolist() == [37, 12]
    part = read_bigann(path, start=30)
    assert isinstance(part, np.memmap) and part.offset == 8 + 30 * 12
    np.testing.assert_array_equal(part, U8[30:])


def test_bigann_groundtruth_round_trip(tmp_path: Path) -> None:
    ids = RNG.integers(0, 1000, size=(5, 10)).astype(np.int32)
    dist = RNG.random(size=(5, 10)).astype(np.float32)
    path = write_bigann_groundtruth(tmp_path / "gt.bin", ids, dist)
    got_ids, got_dist = read_bigann_groundtruth(path)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_dist, dist)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)
    _raises(["gt.bin", "truncated"], read_bigann_groundtruth, path)


@pytest.mark.parametrize("metric,distance", [("l2", "euclidean"), ("cosine", "angular"), ("ip", "dot")])
def test_ann_hdf5_round_trip(tmp_path: Path, metric: str, distance: str) -> None:
    train, test = F32, F32[:4] + 0.5
    nbrs = RNG.integers(0, 37, size=(4, 10))
    dists = RNG.random(size=(4, 10)).astype(np.float32)
    path = write_ann_hdf5(tmp_path / "set.hdf5", train, test, nbrs, dists, metric=metric)
    data = read_ann_hdf5(path)
    assert (data.metric, data.distance, data.dim) == (metric, distance, 12)
    np.testing.assert_array_equal(data.train, train)
    np.testing.assert_array_equal(data.test, test)
    np.testing.assert_array_equal(data.neighbors, nbrs)
    np.testing.assert_array_equal(data.distances, dists)
    assert isinstance(data.train, np.memmap)  # contiguous datasets are mapped, not read
    np.testing.assert_array_equal(read_vectors(path, key="test"), test)


def test_ann_hdf5_reads_chunked_and_compressed(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "gz.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "angular"
        f.create_dataset("train", data=F32, chunks=(8, 12), compression="gzip")
        f.create_dataset("test", data=F32[:3])
    data = read_ann_hdf5(path)
    assert data.metric == "cosine" and not isinstance(data.train, np.memmap)
    np.testing.assert_array_equal(data.train, F32)


def test_parquet_column_layout_and_column_choice(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "cols.parquet", F32, layout="columns")
    np.testing.assert_array_equal(read_vectors(path), F32)
    import pyarrow as pa
    import pyarrow.parquet as pq

    two = tmp_path / "two.parquet"
    pq.write_table(pa.table({"id": np.arange(37), "a": list(F32), "b": list(F32 * 2)}), two)
    _raises(["two.parquet", "several vector columns", "a, b"], read_vectors, two)
    np.testing.assert_array_equal(read_vectors(two, column="b"), F32 * 2)  # variable-size lists


def test_shared_bigann_base_through_read_vectors(shared_data: Path) -> None:
    base = read_vectors(shared_data / "bigann10k" / "base.npy", dim=128)
    assert isinstance(base, np.memmap)
    assert base.shape == (10000, 128) and base.dtype == np.uint8
    queries = read_vectors(shared_data / "bigann10k" / "queries.npy")
    check_same_dim(base, queries)
    np.testing.assert_array_equal(queries, base[:100])  # the README: queries are base rows 0-99


# ------------------------------------------------------------------------------ bad input


def test_truncated_fvecs(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "cut.fvecs", F32)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 6)
    msg = _raises(["cut.fvecs", "truncated", "36 full rows"], read_vectors, path)
    assert "d=12" in msg


def test_fvecs_with_inconsistent_row_dimension(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "mixed.fvecs", F32)
    raw = np.memmap(path, dtype="<i4", mode="r+")
    raw[3 * 13] = 11  # row 3's header
    raw.flush()
    del raw
    _raises(["mixed.fvecs", "inconsistent dimensions", "row 3", "dimension 11"], read_vectors, path)


def test_texmex_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / "junk.bvecs"
    np.array([-5, 1, 2], dtype="<i4").tofile(path)
    _raises(["junk.bvecs", "bad texmex header", "-5"], read_vectors, path)


def test_bigann_header_larger_than_file(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "short.fbin", F32)
    with open(path, "r+b") as f:
        np.array([1000, 12], dtype="<u4").tofile(f)
    _raises(["short.fbin", "truncated", "n=1000, d=12", "37 full rows"], read_vectors, path)


def test_bigann_header_smaller_than_file(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "long.i8bin", I8)
    with open(path, "r+b") as f:
        np.array([37, 11], dtype="<u4").tofile(f)
    _raises(["long.i8bin", "wrong header or trailing data", "n=37, d=11"], read_vectors, path)


def test_bigann_too_short_for_header(tmp_path: Path) -> None:
    path = tmp_path / "tiny.u8bin"
    path.write_bytes(b"\x01\x00\x00")
    _raises(["tiny.u8bin", "truncated", "8-byte"], read_vectors, path)


def test_corrupt_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "bad.hdf5"
    path.write_bytes(b"this is not an HDF5 file" * 50)
    _raises(["bad.hdf5", "corrupt or truncated HDF5"], read_ann_hdf5, path)
    _raises(["bad.hdf5", "corrupt or truncated HDF5"], read_vectors, path)


def test_truncated_hdf5(tmp_path: Path) -> None:
    big = RNG.normal(size=(2000, 16)).astype(np.float32)
    path = write_ann_hdf5(tmp_path / "cut.hdf5", big, big[:10])
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    _raises(["cut.hdf5", "corrupt or truncated HDF5"], read_ann_hdf5, path)


def test_hdf5_missing_datasets_and_bad_distance(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "partial.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "euclidean"
        f.create_dataset("train", data=F32)
    _raises(["partial.hdf5", "missing dataset(s) test", "present: train"], read_ann_hdf5, path)
    _raises(["partial.hdf5", "no dataset 'queries'", "train"], read_vectors, path, key="queries")
    path2 = write_ann_hdf5(tmp_path / "jac.hdf5", F32, F32[:2], metric="l2")
    with h5py.File(path2, "r+") as f:
        f.attrs["distance"] = "jaccard"
    _raises(["jac.hdf5", "unsupported distance 'jaccard'"], read_ann_hdf5, path2)


def test_hdf5_train_test_dimension_mismatch(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "dims.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "angular"
        f.create_dataset("train", data=F32)
        f.create_dataset("test", data=F32[:3, :10])
    _raises(["dims.hdf5", "dimension mismatch", "12", "10"], read_ann_hdf5, path)


def test_hdf5_neighbors_out_of_range(tmp_path: Path) -> None:
    path = write_ann_hdf5(tmp_path / "nb.hdf5", F32, F32[:2], np.array([[0, 37], [1, 2]]))
    _raises(["nb.hdf5", "[neighbors]", "outside the 37 train vectors"], read_ann_hdf5, path)


@pytest.mark.parametrize("suffix", [".fvecs", ".fbin", ".npy", ".hdf5", ".parquet"])
def test_nan_and_inf_rows(tmp_path: Path, suffix: str) -> None:
    x = F32.copy()
    x[5, 3] = np.nan
    x[9, 0] = np.inf
    x[20, 11] = -np.inf
    path = write_vectors(tmp_path / f"nan{suffix}", x)
    _raises([f"nan{suffix}", "3 rows of 37", "NaN or infinite", "first at row 5"], read_vectors, path)
    assert read_vectors(path, check=False).shape == x.shape  # opt-out still reads


def test_nan_check_runs_in_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import harness.formats as fm

    monkeypatch.setattr(fm, "_CHECK_CHUNK_BYTES", 48 * 3)  # 3 rows per chunk
    x = F32.copy()
    x[[10, 11, 30]] = np.nan
    _raises(["big", "3 rows of 37", "first at row 10"], validate_vectors, x, "big")


def test_dimension_mismatch(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "q.npy", F32)
    _raises(["q.npy", "dimension mismatch", "12 dimensions, expected 16"], read_vectors, path, dim=16)
    _raises(["dimension mismatch", "base has 12", "queries has 16"], check_same_dim, F32, np.zeros((2, 16)))
    _raises(
        ["dimension mismatch", "docs.fvecs has 12", "q.fvecs has 8"],
        check_same_dim,
        F32,
        F32[:, :8],
        ("docs.fvecs", "q.fvecs"),
    )


@pytest.mark.parametrize("suffix", sorted(CASES))
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()
    _raises([f"empty{suffix}", "empty file (0 bytes)"], read_vectors, path)


@pytest.mark.parametrize("suffix", [".npy", ".fbin", ".parquet"])
def test_zero_rows(tmp_path: Path, suffix: str) -> None:
    path = write_vectors(tmp_path / f"none{suffix}", np.zeros((0, 12), np.float32))
    _raises([f"none{suffix}", "empty"], read_vectors, path)


def test_truncated_npy_and_corrupt_npz(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "cut.npy", F32)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    _raises(["cut.npy", "corrupt or truncated .npy"], read_vectors, path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    _raises(["bad.npz", "corrupt or truncated .npz"], read_vectors, bad)


def test_npz_key_required_when_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "two.npz"
    np.savez(path, base=F32, queries=F32[:3])
    _raises(["two.npz", "holds 2 arrays", "base, queries", "key="], read_vectors, path)
    np.testing.assert_array_equal(read_vectors(path, key="queries"), F32[:3])


def test_parquet_ragged_vectors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"emb": [[1.0, 2.0], [3.0, 4.0], [5.0]]}), path)
    _raises(["ragged.parquet", "inconsistent dimensions", "row 2 has 1 values"], read_vectors, path)


def test_non_2d_and_non_numeric() -> None:
    _raises(["v", "2-D", "(5,)"], validate_vectors, np.zeros(5), "v")
    _raises(["v", "numeric", "bool"], validate_vectors, np.zeros((2, 2), bool), "v")
    _raises(["v", "dimension 0"], validate_vectors, np.zeros((3, 0)), "v")


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    _raises(["nope.fvecs", "file not found"], read_vectors, tmp_path / "nope.fvecs")
    other = tmp_path / "vecs.csv"
    other.write_text("1,2\n")
    _raises(["vecs.csv", "unsupported", ".fvecs"], read_vectors, other)


# ------------------------------------------------------------------------------ writers


def test_write_refuses_lossy_integer_casts(tmp_path: Path) -> None:
    _raises(["x.bvecs", "do not fit uint8"], write_vectors, tmp_path / "x.bvecs", np.full((2, 3), 300))
    _raises(["x.u8bin", "non-integer"], write_vectors, tmp_path / "x.u8bin", np.full((2, 3), 1.5))
    assert sorted(os.listdir(tmp_path)) == []  # nothing half-written


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "keep.npy", F32)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_vectors(path, np.array([[object()]], dtype=object))  # np.save refuses pickles
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_write_converts_to_format_dtype(tmp_path: Path) -> None:
    x64 = F32.astype(np.float64)
    got = read_vectors(write_vectors(tmp_path / "a.fbin", x64))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, F32)


# ------------------------------------------------------------------------------ odd data


@pytest.mark.parametrize("suffix", [".npy", ".fbin", ".hdf5"])
def test_huge_finite_values_are_refused_before_float32_overflows(tmp_path: Path, suffix: str) -> None:
    x = F32.copy()
    x[17] *= np.float32(3e19)  # finite, but its squared norm overflows float32
    path = write_vectors(tmp_path / f"huge{suffix}", x)
    _raises([f"huge{suffix}", "too large for float32", "row 17", "overflow", "Divide all vectors"],
            read_vectors, path)
    validate_vectors(F32 * np.float32(1e12), "large but fine")  # squared norms ~1e25: accepted


def test_float64_and_int64_values_beyond_float32_are_refused() -> None:
    f64 = np.zeros((4, 3))
    f64[2, 1] = 1e30  # finite in float64, inf once cast to float32
    _raises(["f64", "too large for float32", "row 2"], validate_vectors, f64, "f64")
    big = np.zeros((3, 4), np.int64)
    big[1, 0] = 2**62
    _raises(["i64", "too large for float32", "row 1"], validate_vectors, big, "i64")
    validate_vectors(I32, "i32")  # 32-bit integers never overflow float32 squares


def test_a_text_file_named_npy_says_it_is_not_an_npy_array(tmp_path: Path) -> None:
    path = tmp_path / "base.npy"
    path.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    msg = _raises(["base.npy", "not a .npy array file"], read_vectors, path)
    assert "unsafe" not in msg and "allow_pickle" not in msg
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    msg = _raises(["obj.npy", "Python objects"], read_vectors, tmp_path / "obj.npy")
    assert "unsafe" not in msg
