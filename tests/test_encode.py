"""Text encoding: the estimate before a long encode, labelled progress, resumable chunks.

A fake model stands in for sentence-transformers, so these tests run in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness import encode
from harness.encode import EncoderSpec, encode_texts


class FakeModel:
    """Embeds a text as (len, number of words, 1, 0); records the size of every encode call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts, **_kw):
        self.calls.append(len(texts))
        return np.array([[len(t), len(t.split()), 1.0, 0.0] for t in texts], dtype=np.float32)


@pytest.fixture
def fake(monkeypatch) -> FakeModel:
    model = FakeModel()
    monkeypatch.setattr(encode, "load_encoder", lambda spec: model)
    return model


def texts(n: int) -> list[str]:
    return [f"text number {i} " + "word " * (i % 7) for i in range(n)]


def test_a_long_encode_announces_texts_model_and_estimate(tmp_path, fake, capsys):
    spec = EncoderSpec(model="fake-model", batch_size=16)
    out = encode_texts(texts(300), spec, "document", tmp_path, chunk=128, progress=True, desc="encode toy corpus")
    err = capsys.readouterr().err
    assert "encode toy corpus: 300 texts with fake-model (max_length 256), about " in err
    assert "(the first 16 took " in err
    assert err.count("300 texts with") == 1  # once, before the work, not per chunk
    # the bar moves within a chunk: one batch first, then a few batches per call
    assert fake.calls == [16, 112, 16, 112, 16, 28]
    np.testing.assert_array_equal(out[:, 0], [len(t) for t in texts(300)])


def test_short_or_quiet_encodes_print_no_estimate(tmp_path, fake, capsys):
    spec = EncoderSpec(model="fake-model", batch_size=16)
    encode_texts(texts(16), spec, "query", tmp_path, progress=True, desc="encode toy queries")
    encode_texts(texts(100), spec, "query", tmp_path, progress=False)
    assert "texts with fake-model" not in capsys.readouterr().err


def test_a_resumed_encode_splits_chunks_the_same_way(tmp_path, fake):
    spec = EncoderSpec(model="fake-model", batch_size=16)
    first = encode_texts(texts(300), spec, "document", tmp_path / "a", chunk=128, progress=False)
    key = encode.cache_key(texts(300), spec, "document")
    # an interrupted run: only chunk 1 of 3 was written
    parts = tmp_path / "b" / f"emb-{key}.parts"
    parts.mkdir(parents=True)
    np.save(parts / "000001.npy", np.asarray(first[128:256]))
    fake.calls.clear()
    again = encode_texts(texts(300), spec, "document", tmp_path / "b", chunk=128, progress=False)
    assert fake.calls == [16, 112, 16, 28]  # chunks 0 and 2 only, split as in a fresh run
    np.testing.assert_array_equal(again, first)


def test_duration_wording():
    assert encode._duration(0.2) == "1 s"
    assert encode._duration(45) == "45 s"
    assert encode._duration(210) == "3.5 min"
    assert encode._duration(3 * 3600) == "3.0 h"
