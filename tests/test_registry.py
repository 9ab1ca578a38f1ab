import pytest

from harness.errors import UnknownNameError
from harness.registry import UNAVAILABLE, all_methods, default_methods, get_method, suite, suites


def test_every_plugin_module_imports():
    all_methods()
    broken = {m: why for m, why in UNAVAILABLE.items() if "missing dependency" not in why}
    assert broken == {}


def test_every_suite_names_registered_methods_only():
    registered = set(all_methods())
    for name, members in suites().items():
        unknown = set(members) - registered
        assert not unknown, f"suite {name} names unknown methods {unknown}"
    assert len(default_methods()) >= 10
    assert len(set(suite("baselines")) & set(default_methods())) >= 10


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid methods: .*exact"):
        get_method("nope")
    with pytest.raises(UnknownNameError, match="valid suites"):
        suite("nope")


def test_every_method_documents_paper_formula_and_departures():
    for name, cls in all_methods().items():
        assert cls.paper and cls.bytes_formula, name
        doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
        assert len(doc) > 100, f"{name}: module docstring must cite the paper and give the formula"
