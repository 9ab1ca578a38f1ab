"""Layers × dimensions (post-hoc 2DMSE / Starbucks): layer embeddings, identity, the method, query cost."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from harness import layers
from harness.dataset import RawDataset, fingerprint, identity
from harness.encode import EncoderSpec, cache_key, encode_texts, load_encoder, texts_digest
from harness.errors import DataError
from harness.groundtruth import exact_knn
from harness.loaders import manifest_for
from harness.registry import get_method
from harness.schema import check_columns

TEXTS = [
    "a domesticated carnivorous mammal that barks",
    "the process by which green plants use sunlight to synthesise foods from carbon dioxide and water",
    "x",
    "She walked to the bank of the river and sat down to watch the boats go by in the evening light.",
    "a large natural stream of water",
]


@pytest.fixture(scope="module")
def spec() -> EncoderSpec:
    return EncoderSpec()


def test_last_layer_full_dims_equals_the_standard_embedding(spec, tmp_path):
    standard = load_encoder(spec).encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    every = layers.encode_all_layers(TEXTS, spec)
    assert every.shape == (6, len(TEXTS), 384)
    np.testing.assert_allclose(every[5], standard, atol=1e-5)
    # the earlier layers are different vectors, not copies of the last one
    assert float(np.abs(every[2] - standard).max()) > 0.1
    # through the cached path, as a data set of layer 6 is built
    via_cache = encode_texts(TEXTS, replace(spec, layer=6), "document", tmp_path, progress=False)
    np.testing.assert_allclose(via_cache, standard, atol=1e-5)


def test_one_encode_fills_every_layer_of_the_cache(spec, tmp_path, monkeypatch):
    first = encode_texts(TEXTS, replace(spec, layer=2), "query", tmp_path, progress=False)
    assert len(list(tmp_path.glob("emb-*.npy"))) == 6  # all six layers from the one encode

    def no_encode(*_a, **_k):
        raise AssertionError("layer 4 should come from the cache")

    monkeypatch.setattr(layers, "encode_all_layers", no_encode)
    fourth = encode_texts(TEXTS, replace(spec, layer=4), "query", tmp_path, progress=False)
    assert fourth.shape == first.shape and not np.allclose(fourth, first)


def test_standard_embeddings_keep_their_cache_key_and_identity(spec):
    # the key the cache used before layers existed: texts, model, max length, normalisation, prompt
    legacy = {"texts": texts_digest(TEXTS), "model": spec.model, "max_length": spec.max_length,
              "normalize": spec.normalize, "prompt": ""}
    legacy_key = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert cache_key(TEXTS, spec, "query") == legacy_key
    keys = {cache_key(TEXTS, replace(spec, layer=L), "query") for L in range(1, 7)}
    keys.add(cache_key(TEXTS, replace(spec, layer=3, pooling="cls"), "query"))
    assert len(keys) == 7 and legacy_key not in keys

    rng = np.random.default_rng(0)
    base, queries = rng.standard_normal((20, 8)), rng.standard_normal((4, 8))
    raw = RawDataset("toy", base, queries, "cosine")
    old_formula = fingerprint("cosine", base, queries, normalise=True,
                              extra={"train_queries": False, "judgments": None})
    assert identity(raw) == old_formula  # no encoder setting: the identity stored results carry
    ids = {identity(replace(raw, encoder_identity={"model": spec.model, "layer": L, "pooling": "mean"}))
           for L in (3, 4)}
    ids.add(identity(replace(raw, encoder_identity={"model": spec.model, "layer": 3, "pooling": "cls"})))
    assert len(ids) == 3 and old_formula not in ids  # layer and pooling are in the identity


def test_layer_data_sets_are_named_and_checked():
    m = manifest_for("wordnet@L3")
    assert m.name == "wordnet@L3" and m.encoder["layer"] == 3 and m.encoder["pooling"] == "mean"
    assert manifest_for("scifact", {"layer": 2, "pooling": "cls"}).name == "scifact@L2-cls"
    assert manifest_for("wordnet").name == "wordnet"
    assert layers.parse_layer_name("wordnet@L12") == ("wordnet", 12, "mean")
    assert layers.parse_layer_name("wordnet") is None
    with pytest.raises(DataError, match="layer must be an integer"):
        EncoderSpec.from_options({"layer": -1})
    with pytest.raises(DataError, match="pooling must be one of"):
        EncoderSpec.from_options({"layer": 2, "pooling": "max"})
    with pytest.raises(DataError, match="holds vectors, not texts"):
        manifest_for("bigann10k", {"layer": 2})


def test_a_layer_beyond_the_model_is_a_clear_error(spec, tmp_path):
    with pytest.raises(DataError, match="has 6 layers; layer 7 does not exist"):
        encode_texts(TEXTS, replace(spec, layer=7), "query", tmp_path, progress=False)


@pytest.mark.parametrize("dtype,width", [("fp16", 2), ("int8", 1)])
def test_pca_prefix_storage_bytes_and_quality(dtype, width):
    cls = get_method("starbucks-2d")
    rng = np.random.default_rng(1)
    # 24 informative directions in 48 dims: a 24-d PCA prefix keeps the neighbours, an 4-d one does not
    x = (rng.standard_normal((2000, 24)) @ rng.standard_normal((24, 48))).astype(np.float32)
    x += 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.05 * rng.standard_normal((50, 48)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, truth = exact_knn(x, q, 10, "ip", progress=False)
    recall = {}
    for dims in (4, 24):
        index = cls(48, "ip", dims=dims, dtype=dtype)
        index.fit(x)
        index.add(x)
        mem = index.memory()
        assert mem.codes == 2000 * dims * width
        assert index.store.array.dtype == (np.float16 if dtype == "fp16" else np.int8)
        assert mem.ram / 2000 == pytest.approx(cls.bytes_per_vector(48, 2000, dims=dims, dtype=dtype))
        _, ids = index.search(q, 10)
        recall[dims] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert recall[24] >= (0.97 if dtype == "fp16" else 0.9)
    assert recall[4] < recall[24] - 0.2


def test_int8_codes_round_trip_within_half_a_step():
    store = get_method("starbucks-2d")(16, "ip", dims=16, dtype="int8").store
    z = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    store.calibrate(z)
    back = store.decode(store.encode(z))
    assert np.all(np.abs(back - z) <= store.step / 2 + 1e-6)


def test_query_time_per_layer_is_recorded_and_grows_with_depth(spec):
    out = layers.measure_query_times(spec, TEXTS * 4, single=12, batch=20)
    per = out["per_layer"]
    assert sorted(per, key=int) == [str(L) for L in range(1, 7)]
    assert per["6"]["single_ratio_to_full"] == pytest.approx(1.0)
    # one layer of six runs in a fraction of the full model's time (same run, interleaved)
    assert per["1"]["single_ms_p50"] < per["6"]["single_ms_p50"]
    assert per["1"]["batch_ms_per_query"] < per["6"]["batch_ms_per_query"]
    meta = {"info": {"encoder": {**spec.__dict__, "layer": 2}, "query_encoding": out}}
    cols = layers.encoder_columns(meta)
    check_columns([cols])  # declared in harness/schema.py
    assert cols["encoder_layer"] == 2 and cols["encoder_layers_total"] == 6
    assert cols["query_encode_ms_per_query"] == per["2"]["single_ms_p50"]
    assert layers.encoder_columns({"info": {"encoder": spec.__dict__}}) == {}  # standard embeddings


def test_rows_of_a_layer_data_set_carry_its_depth_and_query_cost(tmp_path):
    from harness.dataset import prepare
    from harness.worker import Task, run_task

    rng = np.random.default_rng(3)
    base, queries = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    timing = {"num_layers": 6, "per_layer": {"3": {"single_ms_p50": 1.5, "batch_ms_per_query": 0.25,
                                                   "single_ratio_to_full": 0.5}}}
    raw = RawDataset("toy@L3", base, queries, "cosine",
                     info={"encoder": {"model": "m", "layer": 3, "pooling": "mean"}, "query_encoding": timing},
                     encoder_identity={"model": "m", "layer": 3, "pooling": "mean"})
    ds = prepare(raw, tmp_path, progress=False)
    task = Task.for_dataset(ds, "starbucks-2d", {"dims": 8, "dtype": "int8"}, [{}], ["h-layers"],
                            latency_queries=5, latency_seconds=0.1)
    (row,) = run_task(task)
    assert row["status"] == "ok" and row["encoder_layer"] == 3 and row["encoder_layers_total"] == 6
    assert row["query_encode_ms_per_query"] == 1.5 and row["query_encode_ratio_to_full"] == 0.5
    check_columns([row])
