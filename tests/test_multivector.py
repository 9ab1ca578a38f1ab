"""Ragged multi-vector storage and token-level encoding (a few SciFact documents)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DataError
from harness.multivector import RaggedVectors, check_ragged


def ragged(seed: int = 0) -> tuple[RaggedVectors, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    items = [rng.normal(size=(n, 5)).astype(np.float32) for n in (3, 0, 7, 1)]
    return RaggedVectors.from_list(items, {"role": "document"}), items


def test_items_are_views_of_one_flat_array():
    rv, items = ragged()
    assert len(rv) == 4 and rv.dim == 5 and rv.n_tokens == 11
    np.testing.assert_array_equal(rv.offsets, [0, 3, 3, 10, 11])
    for i, item in enumerate(items):
        np.testing.assert_array_equal(rv[i], item)
        assert rv[i].shape == (len(item), 5)
    assert np.shares_memory(rv[2], rv.flat)
    np.testing.assert_array_equal(rv[-1], items[-1])
    np.testing.assert_array_equal(rv.owners(), [0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 3])
    with pytest.raises(IndexError):
        rv[4]


def test_save_and_load_memory_mapped(tmp_path):
    rv, items = ragged()
    folder = rv.save(tmp_path / "mv")
    back = RaggedVectors.load(folder)
    assert isinstance(back.flat, np.memmap) and back.offsets.dtype == np.int64
    assert back.info == {"role": "document"}
    for i, item in enumerate(items):
        np.testing.assert_array_equal(back[i], item)
    # replacing an existing folder is atomic and leaves no temporary folders
    other, items2 = ragged(1)
    other.save(folder)
    np.testing.assert_array_equal(RaggedVectors.load(folder)[0], items2[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mv"]


def test_inconsistent_ragged_data_are_rejected(tmp_path):
    flat = np.zeros((5, 2), np.float32)
    for offsets, message in (
        (np.array([0, 2, 4]), "expected 0 to 5"),
        (np.array([1, 5]), "offsets run from 1"),
        (np.array([0, 4, 2, 5]), "offsets decrease at index 1"),
        (np.array([0.0, 5.0]), "1-D integer array"),
    ):
        with pytest.raises(DataError, match=message):
            check_ragged(offsets, flat, "x")
    rv, _ = ragged()
    folder = rv.save(tmp_path / "mv")
    np.save(folder / "offsets.npy", np.array([0, 3, 3, 10], np.int64))
    with pytest.raises(DataError, match="offsets run from 0 to 10, expected 0 to 11"):
        RaggedVectors.load(folder)
    (folder / "flat.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable"):
        RaggedVectors.load(folder)


# ------------------------------------------------------------------------------------------
# encoding (needs the all-MiniLM-L6-v2 model)


def scifact_docs(shared_data: Path, n: int) -> list[dict]:
    with open(shared_data / "scifact" / "corpus.jsonl") as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.mark.embed
def test_token_embeddings_of_scifact_docs_mean_pool_to_the_sentence_embedding(tmp_path, shared_data, monkeypatch):
    pytest.importorskip("sentence_transformers")
    from harness import multivector
    from harness.encode import EncoderSpec, encode_texts, load_encoder

    texts = [(d["title"] + " " + d["text"]).strip() for d in scifact_docs(shared_data, 5)]
    texts.append("short")
    spec = EncoderSpec(max_length=64, normalize=False)
    rv = multivector.encode_tokens(texts, spec, tmp_path / "tok", progress=False, chunk=4)
    tokenizer = load_encoder(spec).tokenizer
    expect = [min(len(tokenizer(t)["input_ids"]), 64) for t in texts]
    np.testing.assert_array_equal(rv.lengths, expect)
    assert rv.dim == 384 and isinstance(rv.flat, np.memmap)
    # all-MiniLM-L6-v2 mean-pools its token embeddings (then L2-normalises in its own pipeline):
    # pooling ours gives its sentence embedding
    sentence = encode_texts(texts, spec, "document", tmp_path / "emb", progress=False)
    pooled = np.stack([rv[i].mean(axis=0) for i in range(len(rv))])
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, sentence, rtol=1e-4, atol=1e-5)
    # cached: a second call encodes nothing
    monkeypatch.setattr(multivector, "_encode_chunk", lambda *a: (_ for _ in ()).throw(AssertionError("re-encoded")))
    again = multivector.encode_tokens(texts, spec, tmp_path / "tok", progress=False, chunk=4)
    np.testing.assert_array_equal(again.flat, rv.flat)
    # normalised tokens are unit vectors; prompts change the cache entry
    monkeypatch.undo()
    unit = multivector.encode_tokens(texts[:2], EncoderSpec(max_length=64), tmp_path / "tok", progress=False)
    np.testing.assert_allclose(np.linalg.norm(unit.flat, axis=1), 1.0, rtol=1e-5)
    assert len(list((tmp_path / "tok").glob("tok-*"))) == 2 and not list((tmp_path / "tok").glob("*.parts"))


@pytest.mark.embed
def test_prepare_multivector_on_a_small_beir_folder(tmp_path, shared_data, monkeypatch):
    pytest.importorskip("sentence_transformers")
    from harness.loaders import load_dataset, prepare_multivector

    monkeypatch.setenv("VECBUDGET_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "scifact6"
    (folder / "qrels").mkdir(parents=True)
    docs = scifact_docs(shared_data, 6)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text('{"_id": "1", "text": "white matter development"}\n'
                                          '{"_id": "2", "text": "cells"}\n')
    (folder / "qrels" / "test.tsv").write_text(f"q\tc\ts\n1\t{docs[0]['_id']}\t1\n2\t{docs[3]['_id']}\t1\n")
    overrides = {"max_length": 48}
    ds = load_dataset(str(folder), overrides=overrides, progress=False)
    assert ds.multivector("document") is None
    prepare_multivector(str(folder), overrides=overrides, progress=False)
    docs_mv, queries_mv = ds.multivector("document"), ds.multivector("query")
    assert len(docs_mv) == ds.n == 6 and len(queries_mv) == ds.nq == 2
    assert docs_mv.lengths.max() <= 48 and queries_mv.lengths.min() >= 3
    # row i of the base and text i of the multi-vector data are the same document
    maxsim = np.array([(queries_mv[0] @ docs_mv[i].T).max(axis=1).sum() for i in range(6)])
    assert ds.doc_ids[int(np.argmax(maxsim))] == docs[0]["_id"]
