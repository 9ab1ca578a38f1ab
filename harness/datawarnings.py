"""Warnings about data that load but may skew results quietly (empty texts, duplicate ids,
unjudged queries, shipped ground truth that disagrees with the recomputed one).

They are Python warnings of category :class:`DataWarning`, raised with :func:`warnings.warn`, so
a caller (the CLI) decides how to show them and a test can catch them with ``pytest.warns``.
Each message starts with the file or data set it concerns and gives counts.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence


class DataWarning(UserWarning):
    """Input data that loaded but may give misleading numbers."""


def warn(message: str, stacklevel: int = 2) -> None:
    """``warnings.warn(message, DataWarning)`` attributed to the caller of the caller."""
    warnings.warn(message, DataWarning, stacklevel=stacklevel + 1)


def _examples(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return f"e.g. {shown}" + (", ..." if len(items) > n else "")


def duplicates(ids: Iterable[str]) -> list[str]:
    """The ids that occur more than once, in first-seen order."""
    return [i for i, c in Counter(ids).items() if c > 1]


def check_text_collection(
    where: str,
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    query_ids: Sequence[str],
    query_texts: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]] | None,
    *,
    docs_name: str = "documents",
    queries_name: str = "queries",
) -> list[str]:
    """Warn (one :class:`DataWarning` each) about empty documents or queries, duplicate document
    or query ids, and queries without judgments (none at all, or only score ≤ 0 ones: their
    nDCG@10 is undefined or 0 whatever a method returns). Returns the messages."""
    out: list[str] = []
    empty_docs = [d for d, t in zip(doc_ids, doc_texts, strict=True) if not t.strip()]
    if empty_docs:
        out.append(f"{where}: {len(empty_docs):,} of {len(doc_ids):,} {docs_name} are empty "
                   f"({_examples(empty_docs)}); they are encoded as empty strings")
    empty_q = [q for q, t in zip(query_ids, query_texts, strict=True) if not t.strip()]
    if empty_q:
        out.append(f"{where}: {len(empty_q):,} of {len(query_ids):,} {queries_name} are empty "
                   f"({_examples(empty_q)}); they are encoded as empty strings")
    for ids, name in ((doc_ids, "document"), (query_ids, "query")):
        dup = duplicates(ids)
        if dup:
            out.append(f"{where}: {len(dup):,} {name} id(s) occur more than once ({_examples(dup)}); "
                       f"ids no longer name one {name} each")
    if qrels is not None:
        unjudged = [q for q in query_ids if not any(s > 0 for s in qrels.get(q, {}).values())]
        if unjudged:
            out.append(f"{where}: {len(unjudged):,} of {len(query_ids):,} {queries_name} have no "
                       f"positive judgment ({_examples(unjudged)}); their nDCG@10 is NaN "
                       f"(no judgments) or 0 (only score-0 ones) whatever a method returns")
    for message in out:
        warn(message, stacklevel=2)
    return out
