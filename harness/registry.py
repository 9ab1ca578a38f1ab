"""Method registry: ``@register`` plus discovery of ``methods/*.py`` and entry points.

Third-party packages add methods without editing this repository by declaring an entry point
in the ``vecbudget.methods`` group that names a module; importing it runs its ``@register``.
Plugins that are not installed as a package are named in the environment variable
``VECBUDGET_PLUGINS``: module names or ``.py`` file paths, separated by ``os.pathsep`` (``:``).
Worker processes inherit the environment, so they see the same methods as the command.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import tomllib

from harness.errors import UnknownNameError
from harness.method import Method

_REGISTRY: dict[str, type[Method]] = {}
#: plugin modules that could not be imported (missing optional dependency, or broken): module -> reason
UNAVAILABLE: dict[str, str] = {}
_DISCOVERED = False
ENTRY_POINT_GROUP = "vecbudget.methods"
#: environment variable naming extra plugin modules or ``.py`` files, separated by ``os.pathsep``
PLUGINS_ENV = "VECBUDGET_PLUGINS"


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method plugin to the registry under ``cls.name``."""
    for attr in ("name", "family", "paper", "bytes_formula"):
        if not getattr(cls, attr, None):
            raise TypeError(f"method {cls.__name__} must declare {attr!r}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} registered twice ({existing} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def discover() -> None:
    """Import every module of the ``methods`` package and every entry-point module, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            _import(f"methods.{info.name}", lambda n=info.name: importlib.import_module(f"methods.{n}"))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _import(ep.value, ep.load)
    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(os.pathsep))):
        _import(spec, lambda s=spec: _load_plugin(s))
    _DISCOVERED = True


def _load_plugin(spec: str) -> None:
    """Import a plugin named in ``VECBUDGET_PLUGINS``: a module name, or a path to a ``.py`` file."""
    if not spec.endswith(".py"):
        importlib.import_module(spec)
        return
    path = os.path.abspath(spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such plugin file: {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    if getattr(sys.modules.get(name), "__file__", None) == path:
        return
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so pickled indexes of its methods resolve their class
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def _import(label: str, load) -> None:
    """Import a plugin module; one whose optional dependency is missing is recorded, not fatal."""
    try:
        load()
    except ModuleNotFoundError as exc:
        UNAVAILABLE[label] = f"missing dependency {exc.name!r}"
        warnings.warn(f"method plugin {label} unavailable: missing dependency {exc.name!r}", stacklevel=3)
    except Exception as exc:  # noqa: BLE001 - one broken plugin must not disable the others
        UNAVAILABLE[label] = f"import failed: {type(exc).__name__}: {exc}"
        warnings.warn(f"method plugin {label} failed to import: {exc}", stacklevel=3)


def get_method(name: str) -> type[Method]:
    discover()
    if name not in _REGISTRY:
        raise UnknownNameError("method", name, list(_REGISTRY))
    return _REGISTRY[name]


def all_methods() -> dict[str, type[Method]]:
    discover()
    return dict(sorted(_REGISTRY.items()))


SUITES_FILE = Path(__file__).resolve().parents[1] / "methods" / "suites.toml"


def suites() -> dict[str, list[str]]:
    """Named method suites declared in ``methods/suites.toml``, plus ``all``."""
    declared = tomllib.loads(SUITES_FILE.read_text())
    return {**declared, "all": list(all_methods())}


def suite(name: str) -> list[str]:
    """Methods of a suite that are registered here (a plugin whose dependency is missing drops out)."""
    known = suites()
    if name not in known:
        raise UnknownNameError("suite", name, list(known))
    registered = all_methods()
    return [m for m in known[name] if m in registered]


def default_methods() -> list[str]:
    return suite("default")
