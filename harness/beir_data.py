"""BEIR-format collections through the ``beir`` package (``GenericDataLoader``).

Documents are encoded as ``title + " " + text`` (stripped), as BEIR's SentenceBERT wrapper does.
Training queries come from ``qrels/train.tsv`` (or ``dev.tsv``) when the folder has one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
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


@contextlib.contextmanager
def _quiet(progress: bool):
    """beir's corpus loader and downloader draw tqdm bars unconditionally; silence them unless asked."""
    if progress:
        yield
        return
    import beir.datasets.data_loader as loader_mod
    import beir.util as util_mod

    saved = [(mod, mod.tqdm) for mod in (loader_mod, util_mod) if hasattr(mod, "tqdm")]
    for mod, bar in saved:
        mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        for mod, bar in saved:
            mod.tqdm = bar


def _loader(folder: Path):
    try:
        from beir.datasets.data_loader import GenericDataLoader
    except ImportError as exc:
        raise VecbudgetError("BEIR collections need the 'beir' extra: pip install '.[beir]'") from exc
    logging.getLogger("beir").setLevel(logging.WARNING)
    return GenericDataLoader(str(folder))


def url_for(name: str) -> str:
    return BEIR_URL.format(name=name)


def download(name: str, dest: Path, url: str | None = None, *, progress: bool = True) -> Path:
    """Fetch a public BEIR collection (needs network) with beir's own utility.

    Downloads and unzips into a temporary folder inside ``dest`` and renames the collection
    folder into place only when complete, so a failed or interrupted download leaves nothing
    behind. Returns ``dest/<name>``.
    """
    try:
        from beir import util
    except ImportError as exc:
        raise VecbudgetError("downloading BEIR collections needs the 'beir' extra") from exc
    url = url or url_for(name)
    final = Path(dest) / name
    if (final / "corpus.jsonl").exists():
        return final
    Path(dest).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest))
    try:
        logging.getLogger("beir").setLevel(logging.WARNING)
        try:
            with _quiet(progress):
                got = Path(util.download_and_unzip(url, str(tmp)))
        except Exception as exc:  # noqa: BLE001 - network, HTTP and zip errors alike
            raise DataError(
                f"could not download BEIR collection {name!r} from {url}: {exc}. Without network, "
                f"download it elsewhere and unzip it to {final} (or set 'path' in the manifest)"
            ) from exc
        if not (got / "corpus.jsonl").exists():
            found = [p.parent for p in tmp.rglob("corpus.jsonl")]
            if len(found) != 1:
                raise DataError(f"the archive from {url} holds no BEIR collection (corpus.jsonl not found)")
            got = found[0]
        if final.exists():
            shutil.rmtree(final)
        got.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load(folder: Path, split: str = "test", *, allow_unknown_qrels: bool = False,
         progress: bool = False) -> BeirCollection:
    """Read a BEIR folder with ``GenericDataLoader``; DataError naming the file for bad input.

    Qrels naming a document that is not in the corpus are an error unless
    ``allow_unknown_qrels`` (then they are dropped, as BEIR's evaluation ignores them).
    """
    folder = Path(folder)
    for needed in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        f = folder / needed
        if not f.exists():
            raise DataError(f"{folder} is not a BEIR folder: {needed} is missing")
        if f.stat().st_size == 0:
            raise DataError(f"{f}: empty file")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    with open(qrels_file, encoding="utf-8", errors="replace") as fh:
        rows = sum(1 for line in fh if line.strip()) - 1  # minus the header
    if rows < 1:
        raise DataError(f"{qrels_file}: empty split {split!r} — no judgments after the header line")
    corpus, queries, qrels = _load_split(folder, split, progress)
    if not corpus:
        raise DataError(f"{folder / 'corpus.jsonl'}: empty — no documents")
    if not queries:
        raise DataError(f"{folder}: split {split!r} has no queries ({folder / 'qrels' / f'{split}.tsv'} has no judgments)")
    unknown = [(q, d) for q, rel in qrels.items() for d in rel if d not in corpus]
    if unknown and not allow_unknown_qrels:
        raise DataError(
            f"{folder / 'qrels' / f'{split}.tsv'}: names {len(unknown)} document id(s) not in corpus.jsonl, "
            f"e.g. {unknown[0][1]!r} (query {unknown[0][0]!r}); set allow_unknown_qrels = true in the "
            f"manifest's [options] to drop them"
        )
    if unknown:
        for q, d in unknown:
            del qrels[q][d]
        qrels = {q: rel for q, rel in qrels.items() if rel}
        queries = {q: t for q, t in queries.items() if q in qrels}
    train_texts: list[str] = []
    for train_split in ("train", "dev"):
        if train_split != split and (folder / "qrels" / f"{train_split}.tsv").exists():
            _, tq, _ = _load_split(folder, train_split, progress)
            test_ids = set(queries)
            train_texts = [t for q, t in tq.items() if q not in test_ids and t]
            break
    doc_ids = list(corpus)
    doc_texts = [((corpus[d].get("title") or "") + " " + (corpus[d].get("text") or "")).strip() for d in doc_ids]
    query_ids = list(queries)
    missing_text = [q for q in query_ids if not isinstance(queries[q], str)]
    if missing_text:
        raise DataError(f"{folder / 'queries.jsonl'}: query {missing_text[0]!r} has no text")
    qrels_int = {q: {d: int(s) for d, s in rel.items()} for q, rel in qrels.items()}
    return BeirCollection(doc_ids, doc_texts, query_ids, [queries[q] for q in query_ids], qrels_int, train_texts)


def _load_split(folder: Path, split: str, progress: bool) -> tuple[dict, dict, dict]:
    qrels_file = folder / "qrels" / f"{split}.tsv"
    loader = _loader(folder)
    try:
        with _quiet(progress):
            return loader.load(split=split)
    except KeyError as exc:
        raise DataError(f"{qrels_file}: names query id {exc.args[0]!r}, which is not in queries.jsonl") from exc
    except StopIteration as exc:
        raise DataError(f"{qrels_file}: empty — not even a header line") from exc
    except IndexError as exc:
        raise DataError(f"{folder}: malformed BEIR files — a qrels row in {qrels_file} has too few "
                        f"columns, or a file is empty ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise DataError(f"{folder}: malformed BEIR files ({exc})") from exc
