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
def clean_registry(monkeypatch):
    for name in registry.BUILTIN:  # import built-ins first: the copy below must contain them
        registry.get(name)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORIGIN", dict(registry._ORIGIN))
    monkeypatch.setattr(registry, "_PLUGIN_ERRORS", {})


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
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    with pytest.warns(UserWarning, match="skipping paradigm plugin 'broken' from package bad-pkg"):
        assert "plug" in registry.names()
    assert registry.get("plug") is good
    with pytest.raises(BenchError, match="bad-pkg: no module named x"):
        registry.get("broken")
