"""BEIR-format collections through the ``beir`` package (``GenericDataLoader``).

Documents are encoded as ``title + " " + text`` (stripped), as BEIR's SentenceBERT wrapper does.
Training queries come from ``qrels/train.tsv`` (or ``dev.tsv``) when the folder has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DataError, VecbudgetError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass
class BeirCollection:
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    train_query_texts: list[str]


def _loader(folder: Path):
    try:
        from beir.datasets.data_loader import GenericDataLoader
    except ImportError as exc:
        raise VecbudgetError("BEIR collections need the 'beir' extra: pip install '.[beir]'") from exc
    logging.getLogger("beir").setLevel(logging.WARNING)
    return GenericDataLoader(str(folder))


def download(name: str, dest: Path) -> Path:
    """Fetch a public BEIR collection (needs network) with beir's own utility."""
    try:
        from beir import util
    except ImportError as exc:
        raise VecbudgetError("downloading BEIR collections needs the 'beir' extra") from exc
    try:
        return Path(util.download_and_unzip(BEIR_URL.format(name=name), str(dest)))
    except Exception as exc:  # noqa: BLE001 - network and zip errors alike
        raise DataError(f"could not download BEIR collection {name!r}: {exc}") from exc


def load(folder: Path, split: str = "test") -> BeirCollection:
    folder = Path(folder)
    for needed in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / needed).exists():
            raise DataError(f"{folder} is not a BEIR folder: {needed} is missing")
    try:
        corpus, queries, qrels = _loader(folder).load(split=split)
    except (ValueError, KeyError) as exc:
        raise DataError(f"{folder}: malformed BEIR files ({exc})") from exc
    if not queries:
        raise DataError(f"{folder}: split {split!r} has no queries")
    train_texts: list[str] = []
    for train_split in ("train", "dev"):
        if train_split != split and (folder / "qrels" / f"{train_split}.tsv").exists():
            _, tq, _ = _loader(folder).load(split=train_split)
            test_ids = set(queries)
            train_texts = [t for q, t in tq.items() if q not in test_ids]
            break
    doc_ids = list(corpus)
    doc_texts = [(corpus[d].get("title", "") + " " + corpus[d].get("text", "")).strip() for d in doc_ids]
    query_ids = list(queries)
    qrels_int = {q: {d: int(s) for d, s in rel.items()} for q, rel in qrels.items()}
    return BeirCollection(doc_ids, doc_texts, query_ids, [queries[q] for q in query_ids], qrels_int, train_texts)
