"""Default query/document prompts of known embedding models, as data.

Many retrieval encoders are trained with a fixed prefix on each side (E5: ``"query: "`` /
``"passage: "``; Nomic: ``"search_query: "`` / ``"search_document: "``; BGE v1.5: an instruction
on queries only). Encoding without them silently costs several nDCG points, so when a manifest or
``--model`` names a model and gives no prompts, :func:`default_prompts` supplies these.

:data:`PROMPTS` maps a shell-style pattern (matched case-insensitively against the full model
name *and* its last path component, so local copies such as ``/models/e5-small-v2`` match) to
its prompts; the first matching entry wins, so specific patterns come before general ones.
Sources are the model cards on the Hugging Face hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class ModelPrompts:
    query: str = ""
    document: str = ""
    trust_remote_code: bool = False  # the model ships custom code (Nomic, Jina)


_BGE_QUERY = "Represent this sentence for searching relevant passages: "
_QWEN3_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"

#: pattern → prompts; first match wins (order matters)
PROMPTS: dict[str, ModelPrompts] = {
    # E5 family (Wang et al. 2022): symmetric prefixes on both sides
    "*e5-mistral-7b-instruct": ModelPrompts(
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ", ""
    ),
    "*multilingual-e5-large-instruct": ModelPrompts(
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ", ""
    ),
    "*e5-*": ModelPrompts("query: ", "passage: "),
    # Nomic embed text v1 / v1.5 / v2
    "*nomic-embed-text*": ModelPrompts("search_query: ", "search_document: ", trust_remote_code=True),
    # BGE English v1.5 and v1: instruction on queries only; bge-m3 needs none
    "*bge-m3*": ModelPrompts(),
    "*bge-*-en-v1.5": ModelPrompts(_BGE_QUERY, ""),
    "*bge-*-en": ModelPrompts(_BGE_QUERY, ""),
    "*mxbai-embed-large-v1": ModelPrompts(_BGE_QUERY, ""),
    "*snowflake-arctic-embed-*": ModelPrompts(_BGE_QUERY, ""),
    # Google EmbeddingGemma
    "*embeddinggemma*": ModelPrompts("task: search result | query: ", "title: none | text: "),
    # Qwen3 embedding: instruction on queries only
    "*qwen3-embedding*": ModelPrompts(_QWEN3_QUERY, ""),
    # GTE (v1) and sentence-transformers' own models: no prompts
    "*gte-*": ModelPrompts(),
    "*all-minilm-*": ModelPrompts(),
    "*all-mpnet-*": ModelPrompts(),
    "*multi-qa-*": ModelPrompts(),
    "*msmarco-*": ModelPrompts(),
}


def lookup(model: str) -> ModelPrompts | None:
    """The registry entry for ``model`` (a hub name or a local path), or None if unknown."""
    name = model.rstrip("/").lower()
    short = name.rsplit("/", 1)[-1]
    for pattern, prompts in PROMPTS.items():
        if fnmatchcase(name, pattern) or fnmatchcase(short, pattern):
            return prompts
    return None


def default_prompts(model: str) -> tuple[str, str]:
    """(query prompt, document prompt) for ``model``; empty strings for an unknown model."""
    p = lookup(model)
    return (p.query, p.document) if p else ("", "")
