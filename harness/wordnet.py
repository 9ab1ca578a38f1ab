"""WordNet 3.0 as a retrieval data set: synset definitions are documents, example sentences are
queries relevant to their own synset.

WordNet is read from Debian's ``wordnet-base`` (``/usr/share/wordnet``) when present, else from
the public WordNet 3.0 tarball (downloaded once into the cache). The ``data.{noun,verb,adj,adv}``
files are parsed here: each synset line ends with ``| gloss``, a gloss being definitions followed
by quoted example sentences. The line's head gives the lexicographer file (``lex_filenum``),
kept for filtered search (:mod:`harness.filters`).
"""

from __future__ import annotations

import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError

DEBIAN_DIR = Path("/usr/share/wordnet")
TARBALL_URL = "https://wordnetcode.princeton.edu/3.0/WordNet-3.0.tar.gz"
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
_QUOTED = re.compile(r'"([^"]*)"')


@dataclass(frozen=True)
class Synset:
    id: str  # pos letter + 8-digit offset, e.g. "n02084071"
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    lexfile: int = -1  # lexicographer file number (lex_filenum, 0-44; harness.filters.LEXNAMES)


def parse_data_file(path: Path, pos: str) -> list[Synset]:
    synsets = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.rstrip("\n").split(" | ", 1)
            fields = head.split()
            w_cnt = int(fields[3], 16)
            lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(w_cnt))
            examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
            definition = _QUOTED.sub("", gloss)
            definition = re.sub(r"(\s*;\s*)+", "; ", definition).strip(" ;")
            if definition:
                synsets.append(Synset(f"{pos}{fields[0]}", lemmas, definition, examples, int(fields[1])))
    return synsets


def locate(cache_root: Path) -> Path:
    """A folder holding WordNet's data files: Debian's, else the tarball's (fetched once)."""
    if all((DEBIAN_DIR / f).exists() for f in POS_FILES.values()):
        return DEBIAN_DIR
    dict_dir = cache_root / "wordnet-3.0" / "WordNet-3.0" / "dict"
    if not dict_dir.exists():
        tarball = cache_root / "WordNet-3.0.tar.gz"
        try:
            if not tarball.exists():
                cache_root.mkdir(parents=True, exist_ok=True)
                urllib.request.urlretrieve(TARBALL_URL, tarball)
            with tarfile.open(tarball) as tar:
                tar.extractall(cache_root / "wordnet-3.0", filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise DataError(
                f"WordNet not found in {DEBIAN_DIR} and its tarball could not be fetched "
                f"({exc}); install Debian's wordnet-base (apt-get install wordnet-base)"
            ) from exc
    return dict_dir


def load_synsets(root: Path) -> list[Synset]:
    out: list[Synset] = []
    for pos, name in POS_FILES.items():
        out.extend(parse_data_file(root / name, pos))
    if not out:
        raise DataError(f"no synsets parsed from WordNet files in {root}")
    return out


@dataclass
class WordnetSplit:
    documents: list[Synset]
    test_queries: list[tuple[str, str, str]]  # (query id, text, synset id)
    train_queries: list[tuple[str, str, str]]


def split(
    synsets: list[Synset], *, documents: int | None, queries: int | None, train_queries: int, seed: int = 0
) -> WordnetSplit:
    """A deterministic subset: query synsets first (one example each), then other definitions.

    ``documents=None`` keeps every synset. ``queries=None`` makes every synset with an example a
    test query except the training ones (drawn first) and those whose sentence a training query
    already uses (the scale track's full WordNet). Test and training queries come from disjoint
    synsets and never share a sentence; each query's only relevant document is its own synset's
    definition.
    """
    rng = np.random.default_rng(seed)
    with_examples = [i for i, s in enumerate(synsets) if s.examples]
    if len(with_examples) < (queries or 0) + train_queries:
        raise DataError(f"WordNet has {len(with_examples)} synsets with examples, fewer than requested")
    order = rng.permutation(with_examples)
    if queries is None:  # all: the training queries first, every other example sentence is a test query
        train_idx = np.asarray(order[:train_queries], dtype=np.int64)
        train_texts = {synsets[i].examples[0] for i in train_idx}
        test_idx = np.array([i for i in order[train_queries:] if synsets[i].examples[0] not in train_texts],
                            dtype=np.int64)
        # WordNet repeats a few sentences across synsets: keep the first as the test query
        seen: set[str] = set()
        keep = []
        for i in test_idx:
            text = synsets[i].examples[0]
            if text not in seen:
                seen.add(text)
                keep.append(i)
        test_idx = np.asarray(keep, dtype=np.int64)
        return _subset(synsets, documents, test_idx, train_idx, rng)
    test_idx = order[:queries]
    # training queries: other synsets, and never a sentence that is also a test query (WordNet
    # repeats a few example sentences across synsets, e.g. "mellow wisdom")
    test_texts = {synsets[i].examples[0] for i in test_idx}
    train_idx = np.array([i for i in order[queries:] if synsets[i].examples[0] not in test_texts][:train_queries],
                         dtype=np.int64)
    return _subset(synsets, documents, test_idx, train_idx, rng)


def _subset(synsets: list[Synset], documents: int | None, test_idx: np.ndarray, train_idx: np.ndarray,
            rng: np.random.Generator) -> WordnetSplit:
    picked = np.concatenate([test_idx, train_idx])
    if documents is None:
        doc_idx = np.arange(len(synsets))
    else:
        if documents < len(picked):
            raise DataError(f"WordNet subset of {documents} documents cannot hold {len(picked)} query synsets")
        rest = np.setdiff1d(np.arange(len(synsets)), picked)
        doc_idx = np.sort(np.concatenate([picked, rng.permutation(rest)[: documents - len(picked)]]))

    def as_queries(idx: np.ndarray, tag: str) -> list[tuple[str, str, str]]:
        return [(f"{tag}-{synsets[i].id}", synsets[i].examples[0], synsets[i].id) for i in idx]

    return WordnetSplit([synsets[i] for i in doc_idx], as_queries(test_idx, "q"), as_queries(train_idx, "t"))
