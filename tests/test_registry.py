import subprocess
import sys

import pytest
import torch

from bench import registry
from bench.config import load_config
from bench.errors import BenchError


class _Valid(registry.Paradigm):
    version = "0"
    description = "test paradigm"
    defaults = {"alpha": 1.0}

    def fit(self, split, context):
        pass

    def score(self, users, stage):
        return torch.zeros(len(users), 3)

    def token_usage(self, users, stage):
        return None


@pytest.fixture
def clean_registry(isolated_paradigms):
    return isolated_paradigms


def test_builtins_are_imported_lazily():
    code = ("import sys; from bench import registry; names = registry.names(); "
            "assert 'paradigms.baselines' not in sys.modules, 'imported too early'; "
            "assert registry.get('pop').name == 'pop'; assert 'paradigms.baselines' in sys.modules; "
            "print(names)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "'pop'" in result.stdout and "'sasrec'" in result.stdout


def test_unknown_name_gets_did_you_mean():
    with pytest.raises(BenchError, match=r"unknown paradigm 'sasrek' \(did you mean 'sasrec'\?\)"):
        registry.get("sasrek")


def test_duplicate_name_is_rejected(clean_registry):
    registry.get("pop")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("pop")(type("OtherPop", (_Valid,), {}))


def test_contract_is_validated_at_registration(clean_registry):
    class NoScore:
        version = "1"

        def fit(self, split, context):
            pass

        def token_usage(self, users, stage):
            return None

    with pytest.raises(TypeError, match="no method score"):
        registry.register("broken")(NoScore)
    with pytest.raises(TypeError, match="fit\\(\\) must take 2 arguments"):
        registry.register("broken")(type("BadFit", (_Valid,), {"fit": lambda self, split: None}))
    with pytest.raises(ValueError, match="invalid"):
        registry.register("Bad Name")(_Valid)


def test_resolve_all_lists_and_globs(clean_registry):
    assert [c.name for c in registry.resolve("all")] == ["id-direct", "id-translation", "pop", "ra-rec", "sasrec"]
    assert [c.name for c in registry.resolve("sas*")] == ["sasrec"]
    assert [c.name for c in registry.resolve("pop, pop,sasrec")] == ["pop", "sasrec"]
    with pytest.raises(BenchError, match="no paradigm matches"):
        registry.resolve("zzz*")


def test_options_merge_defaults_and_reject_unknown_keys(clean_registry):
    cls = registry.register("optioned")(_Valid)
    assert registry.options_for(cls, load_config("default")) == {"alpha": 1.0}
    cfg = load_config("default", overrides=["paradigms.optioned.alpha=2.5"])
    assert registry.options_for(cls, cfg) == {"alpha": 2.5}
    bad = load_config("default", overrides=["paradigms.optioned.alpah=2"])
    with pytest.raises(BenchError, match=r"paradigms.optioned.alpah.*did you mean 'alpha'"):
        registry.options_for(cls, bad)


class _FakeEntryPoint:
    def __init__(self, name, target, package="fake-plugin"):
        self.name, self._target, self.value = name, target, "fake:Thing"
        self.dist = type("Dist", (), {"name": package})()

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_point_plugins_register_and_broken_ones_are_skipped(clean_registry, monkeypatch):
    good = type("Plugin", (_Valid,), {"description": "from a plugin"})
    points = [_FakeEntryPoint("plug", good), _FakeEntryPoint("broken", ImportError("no module named x"), "bad-pkg")]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: points)
    monkeypatch.setattr(registry.PARADIGMS, "_plugins_loaded", False)
    with pytest.warns(UserWarning, match="skipping paradigm plugin 'broken' from package bad-pkg"):
        assert "plug" in registry.names()
    assert registry.get("plug") is good
    with pytest.raises(BenchError, match="bad-pkg: no module named x"):
        registry.get("broken")


def test_builtin_paradigms_are_found_from_their_decorators_without_a_list(clean_registry):
    """The source scan names exactly the paradigms that importing the modules registers."""
    found = registry.builtin_paradigms()
    for module in set(found.values()):
        __import__(module)
    registered = {name for name, cls in registry.PARADIGMS._objects.items() if cls.__module__.startswith("paradigms.")}
    assert set(found) == registered and {"pop", "ra-rec-items"} <= set(found)


def test_a_generic_registry_resolves_lazy_entries_and_suggests_names():
    things = registry.Registry("widget")
    things.add_lazy("square-root", "math:sqrt")
    assert "square-root" in things and things.names() == ["square-root"]
    assert things.get("square-root")(9.0) == 3.0
    with pytest.raises(BenchError, match=r"unknown widget 'square-rot' \(did you mean 'square-root'\?\); known: "
                                         r"square-root"):
        things.get("square-rot")
    things.register("cube")(lambda x: x ** 3)
    assert things.get("cube")(2) == 8
    with pytest.raises(ValueError, match="already registered"):
        things.add("cube", abs)
