"""Data set manifests: ``datasets/<name>.toml`` declares a data set as data.

Keys: ``name``, ``format`` (a builder in :data:`harness.loaders.BUILDERS`), ``metric``,
``path`` (relative to the repository root, or absolute), optional ``url``, ``licence``,
``citation``, ``description``, an ``[encoder]`` table for text collections and an ``[options]``
table passed to the builder.
"""

from __future__ import annotations

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
    encoder: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    source_file: Path | None = None

    def info(self) -> dict[str, Any]:
        return {
            "manifest": self.name,
            "format": self.format,
            "source": str(self.path) if self.path else self.url,
            "licence": self.licence,
            "citation": self.citation,
            "encoder": self.encoder,
            "options": self.options,
        }


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
        path = Path(path)
        if not path.is_absolute():
            path = (REPO_ROOT / path).resolve()
    known = {f for f in Manifest.__dataclass_fields__ if f not in ("path", "source_file")}
    unknown = set(data) - known
    if unknown:
        raise DataError(f"manifest {file}: unknown key(s) {', '.join(sorted(unknown))}")
    return Manifest(path=path, source_file=file, **data)


def manifests(directory: Path = MANIFEST_DIR) -> dict[str, Manifest]:
    out = {}
    for file in sorted(directory.glob("*.toml")):
        m = load_manifest(file)
        out[m.name] = m
    return out


def get_manifest(name: str, directory: Path = MANIFEST_DIR) -> Manifest:
    all_ = manifests(directory)
    if name not in all_:
        raise UnknownNameError("data set", name, list(all_))
    return all_[name]
