import json
import warnings

import numpy as np
import pytest

from harness.dataset import PreparedDataset, RawDataset, prepare
from harness.datawarnings import DataWarning
from harness.errors import DataError
from harness.groundtruth import exact_knn
from harness.wordnet import parse_data_file, split
from tests.conftest import clustered


def raw(**kw):
    base, queries = clustered(200, 8, 10)
    args = {"name": "toy", "base": base, "queries": queries, "metric": "l2", **kw}
    return RawDataset(**args)


def test_prepare_writes_ground_truth_and_reuses_the_cache(tmp_path):
    ds = prepare(raw(), tmp_path, progress=False)
    assert ds.gt_ids.shape == (10, 128)  # GT_K neighbours per query
    assert ds.n == 200 and ds.dim == 8 and not ds.has_qrels
    again = prepare(raw(), tmp_path, progress=False)
    assert again.path == ds.path
    assert len(list(tmp_path.iterdir())) == 1


def test_cosine_vectors_are_normalised(tmp_path):
    ds = prepare(raw(metric="cosine"), tmp_path, progress=False)
    np.testing.assert_allclose(np.linalg.norm(ds.base, axis=1), 1.0, rtol=1e-5)
    assert ds.method_metric == "ip"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"queries": np.zeros((0, 8), np.float32)}, "empty"),
        ({"queries": np.ones((3, 5), np.float32)}, "dimension 5 does not match"),
        ({"base": np.full((4, 8), np.nan, np.float32)}, "NaN or infinite"),
        ({"metric": "hamming"}, "unknown metric"),
    ],
)
def test_bad_input_is_a_clear_data_error_and_writes_nothing(tmp_path, kw, message):
    with pytest.raises(DataError, match=message):
        prepare(raw(**kw), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_infinite_row_is_reported_with_its_index(tmp_path):
    base, queries = clustered(50, 4, 3)
    base[17, 2] = np.inf
    with pytest.raises(DataError, match="first at row 17"):
        prepare(raw(base=base, queries=queries), tmp_path, progress=False)


def test_qrels_naming_unknown_documents_are_rejected(tmp_path):
    r = raw(doc_ids=[f"d{i}" for i in range(200)], query_ids=[f"q{i}" for i in range(10)],
            qrels={"q1": {"nope": 1}})
    with pytest.raises(DataError, match="unknown document id"):
        prepare(r, tmp_path, progress=False)


def test_corrupt_cache_file_is_reported(tmp_path):
    ds = prepare(raw(), tmp_path, progress=False)
    (ds.path / "base.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="corrupt"):
        _ = PreparedDataset(ds.path).base
    meta = json.loads((ds.path / "meta.json").read_text())
    (ds.path / "meta.json").write_text(json.dumps(meta)[:20])
    with pytest.raises(DataError, match="unreadable"):
        PreparedDataset(ds.path)


WORDNET_LINES = """\
  1 This software and database is being provided to you, the LICENSEE, by
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus Canis; "the dog barked all night"; "a dog's life"
02084732 05 n 01 pooch 0 000 | informal terms for dogs
"""


def test_wordnet_parser_and_split(tmp_path):
    f = tmp_path / "data.noun"
    f.write_text(WORDNET_LINES)
    synsets = parse_data_file(f, "n")
    assert [s.id for s in synsets] == ["n02084071", "n02084732"]
    dog = synsets[0]
    assert dog.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert dog.definition == "a member of the genus Canis"
    assert dog.examples == ("the dog barked all night", "a dog's life")
    sp = split(synsets, documents=None, queries=1, train_queries=0)
    assert sp.test_queries == [("q-n02084071", "the dog barked all night", "n02084071")]
    with pytest.raises(DataError):
        split(synsets, documents=None, queries=2, train_queries=0)


def test_debian_wordnet_has_the_expected_size():
    from harness.wordnet import DEBIAN_DIR, load_synsets

    if not (DEBIAN_DIR / "data.noun").exists():
        pytest.skip("wordnet-base not installed")
    synsets = load_synsets(DEBIAN_DIR)
    assert len(synsets) == 117659  # WordNet 3.0 synsets
    assert sum(bool(s.examples) for s in synsets) > 30000


def test_shuffled_shipped_neighbours_are_warned_with_the_agreement_figure(tmp_path):
    base, queries = clustered(300, 8, 100, seed=3)
    truth = exact_knn(base, queries, 10, "l2")[1]
    shuffled = truth[np.roll(np.arange(100), 1)]  # every row belongs to another query
    with pytest.warns(DataWarning, match=r"only 0 of 100 checked rows \(0%"):
        ds = prepare(raw(base=base, queries=queries, shipped_neighbors=shuffled), tmp_path, progress=False)
    assert ds.meta["shipped_gt"]["rows_equal_up_to_ties"] == 0 and "warning" in ds.meta["shipped_gt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        good = prepare(raw(base=base, queries=queries * 1.01, shipped_neighbors=exact_knn(
            base, queries * 1.01, 10, "l2")[1]), tmp_path, progress=False)
    assert good.meta["shipped_gt"]["rows_equal_up_to_ties"] == 100 and "warning" not in good.meta["shipped_gt"]


def test_huge_finite_values_are_refused_before_ground_truth(tmp_path):
    base, queries = clustered(200, 8, 10)
    with pytest.raises(DataError, match="toy base vectors: values too large for float32"):
        prepare(raw(base=base * np.float32(1e19), queries=queries), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_full_wordnet_split_takes_every_example_not_used_for_training():
    """``queries=None`` (``--full``): every synset with an example is a test or a training query,
    never both, never sharing a sentence; training queries as the seed draws them."""
    from harness.wordnet import Synset

    synsets = [Synset(id=f"n{i:08d}", lemmas=(f"w{i}",), definition=f"definition {i}",
                      examples=((f"sentence {i % 40}",) if i % 3 else ())) for i in range(120)]
    sp = split(synsets, documents=None, queries=None, train_queries=10, seed=1)
    test, train = sp.test_queries, sp.train_queries
    assert len(train) == 10 and len(sp.documents) == 120
    train_texts = {t for _, t, _ in train}
    assert not train_texts & {t for _, t, _ in test}
    assert not {s for _, _, s in train} & {s for _, _, s in test}
    assert len({t for _, t, _ in test}) == len(test)  # a repeated sentence is one query
    with_examples = {s.examples[0] for s in synsets if s.examples}
    assert {t for _, t, _ in test} | train_texts == with_examples  # nothing left out
