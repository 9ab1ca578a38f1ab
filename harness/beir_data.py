"""BEIR-format collections through the ``beir`` package (``GenericDataLoader``).

Documents are encoded as ``title + " " + text`` (stripped), as BEIR's SentenceBERT wrapper does.
Training queries come from ``qrels/train.tsv`` (or ``dev.tsv``) when the folder has one.

Beyond beir's loader: a qrels file without its header line keeps its first judgment; a line of
``corpus.jsonl``/``queries.jsonl`` that is not JSON is named by file and line; empty documents or
queries, repeated ids and queries without a positive judgment are counted in a
:class:`~harness.datawarnings.DataWarning`; beir's progress bars are labelled.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness.datawarnings import check_text_collection, duplicates, warn
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
def _quiet(progress: bool, label: str = "BEIR"):
    """beir's corpus loader and downloader draw tqdm bars unconditionally and unlabelled:
    silence them unless asked, and label them (``label``) when shown."""
    import beir.datasets.data_loader as loader_mod
    import beir.util as util_mod

    saved = [(mod, mod.tqdm) for mod in (loader_mod, util_mod) if hasattr(mod, "tqdm")]

    def labelled(bar):  # beir labels its download bar with a temporary path, its corpus bar not at all
        return lambda *args, **kw: bar(*args, **{**kw, "desc": label})

    for mod, bar in saved:
        mod.tqdm = labelled(bar) if progress else functools.partial(bar, disable=True)
    try:
        yield
    finally:
        for mod, bar in saved:
            mod.tqdm = bar


def _loader(folder: Path, qrels_file: Path):
    try:
        from beir.datasets.data_loader import GenericDataLoader
    except ImportError as exc:
        raise VecbudgetError("BEIR collections need the 'beir' extra: pip install '.[beir]'") from exc
    logging.getLogger("beir").setLevel(logging.WARNING)
    return GenericDataLoader(str(folder), qrels_file=str(qrels_file))


def _first_line(file: Path) -> str:
    with open(file, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                return line
    return ""


def qrels_has_header(file: Path) -> bool:
    """Whether a qrels ``.tsv`` starts with a header line (``query-id corpus-id score``).

    BEIR's loader always skips the first line; a file without a header would silently lose its
    first judgment. A first line whose third column is a number is a judgment, not a header.
    """
    cols = _first_line(file).rstrip("\r\n").split("\t")
    if len(cols) < 3:
        return True
    try:
        float(cols[2])
    except ValueError:
        return True
    return False


@contextlib.contextmanager
def _qrels_for_beir(file: Path):
    """``file``, or a temporary copy with a header line prepended when it has none."""
    if qrels_has_header(file):
        yield file
        return
    with tempfile.TemporaryDirectory(prefix="vecbudget-qrels-") as tmp:
        copy = Path(tmp) / file.name
        with open(copy, "wb") as out, open(file, "rb") as src:
            out.write(b"query-id\tcorpus-id\tscore\n")
            shutil.copyfileobj(src, out)
        yield copy


def _bad_json_line(folder: Path) -> str | None:
    """Where the first line of corpus.jsonl / queries.jsonl that is not valid JSON is (the order
    beir reads them), as ``"<file>: line N ..."``; None if every line parses."""
    for name in ("corpus.jsonl", "queries.jsonl"):
        file = folder / name
        with open(file, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    json.loads(line.rstrip("\r\n"))  # so a column points into this line
                except json.JSONDecodeError as exc:
                    what = ("is blank (every line must be one JSON object)" if not line.strip()
                            else f"is not valid JSON: {exc.msg} at column {exc.colno}")
                    return f"{file}: line {number} {what}"
    return None


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
            with _quiet(progress, f"download {name}"):
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
        rows = sum(1 for line in fh if line.strip()) - qrels_has_header(qrels_file)
    if rows < 1:
        raise DataError(f"{qrels_file}: empty split {split!r} — no judgments after the header line")
    corpus, queries, qrels = _load_split(folder, split, progress)
    _warn_duplicates(folder, split, corpus, queries, rows, sum(len(r) for r in qrels.values()))
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
    query_texts = [queries[q] for q in query_ids]
    check_text_collection(str(folder), doc_ids, doc_texts, query_ids, query_texts, qrels_int,
                          docs_name="documents (title and text)", queries_name=f"{split} queries")
    return BeirCollection(doc_ids, doc_texts, query_ids, query_texts, qrels_int, train_texts)


def _ids(file: Path) -> list[str]:
    """The ``_id`` of every line of a BEIR ``.jsonl`` file (it has parsed once already)."""
    with open(file, encoding="utf-8") as fh:
        return [str(json.loads(line).get("_id")) for line in fh]


def _warn_duplicates(folder: Path, split: str, corpus: dict, queries: dict, qrels_rows: int,
                     judgments: int) -> None:
    """beir reads each file into a dict, so a repeated id silently replaces the earlier entry:
    warn with counts (the corpus is rescanned only when its line count shows a repeat)."""
    corpus_file = folder / "corpus.jsonl"
    with open(corpus_file, "rb") as fh:
        lines = sum(1 for _ in fh)
    if lines > len(corpus):
        dup = duplicates(_ids(corpus_file))
        warn(f"{corpus_file}: {lines - len(corpus):,} line(s) repeat the id of an earlier document "
             f"({len(dup):,} id(s), e.g. {dup[0]!r}); only the last one with each id is kept", stacklevel=3)
    query_file = folder / "queries.jsonl"
    dup = [q for q in duplicates(_ids(query_file)) if q in queries]
    if dup:
        warn(f"{query_file}: {len(dup):,} {split} query id(s) occur on more than one line (e.g. "
             f"{dup[0]!r}); only the last text with each id is kept", stacklevel=3)
    if qrels_rows > judgments:
        warn(f"{folder / 'qrels' / f'{split}.tsv'}: {qrels_rows - judgments:,} row(s) repeat an earlier "
             f"(query, document) pair; the last score of each pair is kept", stacklevel=3)


def _load_split(folder: Path, split: str, progress: bool) -> tuple[dict, dict, dict]:
    qrels_file = folder / "qrels" / f"{split}.tsv"
    try:
        with (_qrels_for_beir(qrels_file) as readable, _quiet(progress, f"read {folder.name} corpus.jsonl [{split}]"),
              warnings.catch_warnings()):
            warnings.simplefilter("ignore", ResourceWarning)  # beir leaves its files to the collector
            return _loader(folder, readable).load_custom()
    except json.JSONDecodeError as exc:
        where = _bad_json_line(folder)
        raise DataError(where or f"{folder}: malformed BEIR .jsonl file ({exc})") from exc
    except KeyError as exc:
        raise DataError(f"{qrels_file}: names query id {exc.args[0]!r}, which is not in queries.jsonl") from exc
    except StopIteration as exc:
        raise DataError(f"{qrels_file}: empty — not even a header line") from exc
    except IndexError as exc:
        raise DataError(f"{folder}: malformed BEIR files — a qrels row in {qrels_file} has too few "
                        f"columns, or a file is empty ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise DataError(f"{folder}: malformed BEIR files ({exc})") from exc
