"""Data set manifests: ``datasets/<name>.toml`` declares a data set as data.

Keys: ``name``, ``format`` (a builder in :data:`harness.loaders.BUILDERS`), ``metric``,
``path`` (relative to the repository root for manifests in ``datasets/``, to the manifest's own
folder elsewhere, or absolute), optional ``url`` (download source used when ``path`` is absent),
``dim`` (declared dimension, checked when the data are built), ``licence``, ``citation``,
``description``, ``tags`` (e.g. ``["text", "ood"]``), an ``[encoder]`` table for text
collections (:class:`harness.encode.EncoderSpec` fields) and an ``[options]`` table passed to the
builder.

Manifests are read from ``datasets/`` and from the folders listed in ``VECBUDGET_MANIFESTS``
(``os.pathsep``-separated); a name defined twice is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from harness.errors import DataError, UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIR = REPO_ROOT / "datasets"


@dataclass
class Manifest:
    name: str
    format: str
    metric: str
    path: Path | None = None
    url: str | None = None
    description: str = ""
    licence: str = ""
    citation: str = ""
    dim: int | None = None
    tags: list[str] = field(default_factory=list)
    encoder: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    source_file: Path | None = None

    def info(self) -> dict[str, Any]:
        out = {
            "manifest": self.name,
            "format": self.format,
            "source": str(self.path) if self.path else self.url,
            "licence": self.licence,
            "citation": self.citation,
            "encoder": self.encoder,
            "options": self.options,
        }
        if self.tags:
            out["tags"] = self.tags
        return out


def load_manifest(file: Path) -> Manifest:
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"manifest {file} is unreadable: {exc}") from exc
    missing = [k for k in ("name", "format", "metric") if k not in data]
    if missing:
        raise DataError(f"manifest {file} lacks {', '.join(missing)}")
    path = data.pop("path", None)
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_absolute():
            anchor = REPO_ROOT if file.resolve().parent == MANIFEST_DIR.resolve() else file.resolve().parent
            path = (anchor / path).resolve()
    known = {f for f in Manifest.__dataclass_fields__ if f not in ("path", "source_file")}
    unknown = set(data) - known
    if unknown:
        raise DataError(
            f"manifest {file}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    for key, kind in (("encoder", dict), ("options", dict), ("tags", list)):
        if key in data and not isinstance(data[key], kind):
            raise DataError(f"manifest {file}: '{key}' must be a {'table' if kind is dict else 'list'}")
    if "dim" in data and (not isinstance(data["dim"], int) or data["dim"] < 1):
        raise DataError(f"manifest {file}: 'dim' must be a positive integer, got {data['dim']!r}")
    return Manifest(path=path, source_file=file, **data)


def manifest_dirs() -> list[Path]:
    """``datasets/`` then the folders in ``VECBUDGET_MANIFESTS``."""
    extra = [Path(p) for p in os.environ.get("VECBUDGET_MANIFESTS", "").split(os.pathsep) if p]
    return [MANIFEST_DIR, *extra]


def manifests(directory: Path | None = None) -> dict[str, Manifest]:
    """Every manifest by name, from ``directory`` or (default) all of :func:`manifest_dirs`."""
    out: dict[str, Manifest] = {}
    for folder in [directory] if directory is not None else manifest_dirs():
        for file in sorted(Path(folder).glob("*.toml")):
            m = load_manifest(file)
            if m.name in out:
                raise DataError(f"data set {m.name!r} is declared twice: {out[m.name].source_file} and {file}")
            out[m.name] = m
    return out


def get_manifest(name: str, directory: Path | None = None) -> Manifest:
    all_ = manifests(directory)
    if name not in all_:
        raise UnknownNameError("data set", name, list(all_))
    return all_[name]
