"""Registries: one generic :class:`Registry` for everything a user can name, and the paradigm registry.

A :class:`Registry` maps names to objects. Entries are added with the decorator :meth:`Registry.register`, or
lazily as ``"module:object"`` / ``"module"`` strings that are imported on first use. Unknown names get a
did-you-mean error; a registry with an entry-point group also finds third-party plugins. Four registries use
it: paradigms (here), metrics (``bench.metrics.METRICS``), data sets (``bench.data.DATASETS``) and backbone
aliases (``bench.llm.BACKBONES``).

Paradigms: the contract lives in :mod:`bench.contract` (re-exported here, so plugins keep writing
``from bench.registry import Paradigm, register``). Built-in paradigms are found by reading the
``@register("name")`` decorators of the modules in ``paradigms/`` (no import, no second list); third-party
packages register through the entry-point group ``bench.paradigms`` (name = paradigm name, value =
``module:Class`` or a module that registers on import). Registration validates the class (pluggy-style), so a
broken plugin fails when it is loaded, with its package named, not halfway through a run.
"""
from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib
import inspect
import re
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from bench.config import Config, suggest
from bench.contract import Context, Paradigm, SplitView, TokenUsage
from bench.errors import BenchError

__all__ = ["Context", "PARADIGMS", "Paradigm", "Registry", "SplitView", "TokenUsage", "get", "names",
           "options_for", "register", "resolve"]

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class Registry(Generic[T]):
    """Names -> objects of one ``kind`` (``"paradigm"``, ``"metric"``, ...).

    ``check(obj, name)`` (optional) validates an object when it is registered and raises ``TypeError`` when it
    does not meet the kind's contract. ``entry_point_group`` (optional) is where installed packages add entries.
    """

    def __init__(self, kind: str, check: Callable[[Any, str], None] | None = None,
                 entry_point_group: str | None = None, hint: str = ""):
        self.kind, self.check, self.group, self.hint = kind, check, entry_point_group, hint
        self._lazy: dict[str, str] = {}
        self._objects: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._plugin_errors: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None

    # -- adding entries --------------------------------------------------------------------------------------
    def add(self, name: str, obj: T, origin: str | None = None) -> T:
        """Register ``obj`` under ``name``; ``ValueError`` for a bad or taken name, ``TypeError`` from ``check``."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} is invalid: use lower case letters, digits, '-', '_', '.'")
        if self.check:
            self.check(obj, name)
        origin = origin or f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)}"
        if name in self._objects and self._origin[name] != origin:
            raise ValueError(f"{self.kind} '{name}' is already registered by {self._origin[name]}; {origin} must "
                             "use another name")
        self._objects[name] = obj
        self._origin[name] = origin
        return obj

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` (default name: the object's ``name`` attribute)."""
        def decorate(obj: T) -> T:
            key = name or getattr(obj, "name", "")
            self.add(key, obj)
            if isinstance(obj, type):
                obj.name = key
            return obj

        return decorate

    def add_lazy(self, name: str, target: str) -> None:
        """``target`` is ``"module:object"`` (registered under ``name`` when first asked for) or ``"module"``
        (a module whose import registers ``name``)."""
        self._lazy[name] = target

    # -- looking up ------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every name that can be asked for, sorted (lazy entries and plugins included)."""
        self._load_plugins()
        return sorted(set(self._lazy) | set(self._objects))

    def __contains__(self, name: str) -> bool:
        return name in self._objects or name in self._lazy or name in self.names()

    def get(self, name: str) -> T:
        """The object registered as ``name``; a did-you-mean error for an unknown name."""
        if name not in self._objects and name in self._lazy:
            self._resolve_lazy(name)
        if name not in self._objects:
            self._load_plugins()
        if name in self._objects:
            return self._objects[name]
        if name in self._plugin_errors:
            raise BenchError(f"{self.kind} '{name}' failed to load ({self._plugin_errors[name]})")
        hint = self.hint or f"known: {', '.join(self.names())}"
        raise BenchError(f"unknown {self.kind} '{name}'{suggest(name, self.names())}; {hint}")

    def _resolve_lazy(self, name: str) -> None:
        module, _, attr = self._lazy[name].partition(":")
        loaded = importlib.import_module(module)
        if attr and name not in self._objects:
            self.add(name, getattr(loaded, attr))

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.group):
            package = ep.dist.name if ep.dist else ep.value
            try:
                if ep.name in self._lazy:
                    raise ValueError(f"the name '{ep.name}' belongs to a built-in {self.kind}; register under "
                                     "another name")
                obj = ep.load()
                if ep.name not in self._objects and inspect.ismodule(obj):
                    raise TypeError(f"entry point {ep.value} registered no {self.kind} '{ep.name}'")
                if ep.name not in self._objects:
                    self.register(ep.name)(obj)
            except Exception as exc:  # a broken plugin must not take the others down
                self._plugin_errors[ep.name] = f"{package}: {exc}"
                warnings.warn(f"skipping {self.kind} plugin '{ep.name}' from package {package}: {exc}", stacklevel=3)

    @contextlib.contextmanager
    def isolated(self) -> Iterator["Registry[T]"]:
        """Everything registered inside the block is forgotten after it (for tests); lazy entries are
        resolved first so the built-ins stay."""
        for name in list(self._lazy):
            self.get(name)
        saved = dict(self._objects), dict(self._origin), dict(self._plugin_errors), self._plugins_loaded
        try:
            yield self
        finally:
            self._objects, self._origin, self._plugin_errors = (dict(x) for x in saved[:3])
            self._plugins_loaded = saved[3]


def metric_at(column: str, metrics: Registry, key: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)`` for a metric of registry ``metrics``; a one-line error naming config
    ``key`` for an unknown metric or a K below 1."""
    name, _, k = str(column).partition("@")
    if name not in metrics:
        raise BenchError(f"config key '{key}': {column!r} names unknown metric {name!r}; use one of "
                         f"{', '.join(metrics.names())} (a plugin metric needs its package installed)")
    if not k.isdigit() or int(k) < 1:
        raise BenchError(f"config key '{key}': {column!r} is not METRIC@K with K an integer >= 1 (e.g. {name}@10)")
    return name, int(k)


# -- paradigms -------------------------------------------------------------------------------------------------
def _check_contract(cls: Any, name: str) -> None:
    if not isinstance(cls, type):
        raise TypeError(f"paradigm '{name}': register a class, got {type(cls).__name__}")
    for method, params in (("fit", 2), ("score", 2), ("token_usage", 2)):
        func = getattr(cls, method, None)
        if not callable(func):
            raise TypeError(f"paradigm '{name}' ({cls.__qualname__}) has no method {method}()")
        positional = [p for p in inspect.signature(func).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) != params + 1:  # + self
            raise TypeError(f"paradigm '{name}': {method}() must take {params} arguments besides self")
    if not isinstance(getattr(cls, "version", None), str):
        raise TypeError(f"paradigm '{name}': class attribute 'version' must be a string")
    if not isinstance(getattr(cls, "defaults", {}), Mapping):
        raise TypeError(f"paradigm '{name}': class attribute 'defaults' must be a mapping")
    for key, spec in (getattr(cls, "search_space", None) or {}).items():
        problem = _space_problem(cls, key, spec)
        if problem:
            raise TypeError(f"paradigm '{name}': search_space['{key}'] {problem}")


def _space_problem(cls: type, key: str, spec: Any) -> str | None:
    """Why ``key: spec`` is not a valid search-space entry of ``cls`` (None when it is)."""
    own = key.split(".", 1)[1] if key.startswith("train.") else None
    if own is None and key not in getattr(cls, "defaults", {}):
        return f"names no option of the paradigm (its options: {', '.join(cls.defaults)})"
    if own is not None and own not in PER_PARADIGM_TRAIN:
        return f"names a train key that cannot differ per paradigm (these can: {', '.join(PER_PARADIGM_TRAIN)})"
    kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
    if kind == "choice" and len(spec) == 2 and len(spec[1]) > 0:
        return None
    if kind in ("float", "int") and len(spec) in (3, 4) and spec[1] < spec[2] and spec[3:] in ((), ("log",)):
        return None
    return f"must be ('float'|'int', low, high[, 'log']) or ('choice', [values]), got {spec!r}"


PARADIGMS: Registry[type] = Registry("paradigm", _check_contract, "bench.paradigms",
                                     hint="`bench list` shows them all")
BUILTIN_PACKAGE = Path(__file__).resolve().parent.parent / "paradigms"


def builtin_paradigms(package: Path = BUILTIN_PACKAGE) -> dict[str, str]:
    """Paradigm name -> module, read from the ``@register("name")`` decorators in ``package`` (not imported)."""
    found = {}
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                for deco in node.decorator_list:
                    if (isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register" and deco.args
                            and isinstance(deco.args[0], ast.Constant)):
                        found[deco.args[0].value] = f"{package.name}.{path.stem}"
    return found


for _name, _module in builtin_paradigms().items():
    PARADIGMS.add_lazy(_name, _module)


def register(name: str | None = None):
    """Class decorator: register a paradigm under ``name`` (default: the class's ``name`` attribute).

    Raises ``ValueError`` for a bad or duplicate name and ``TypeError`` when the contract is not met.
    """
    return PARADIGMS.register(name)


def names() -> list[str]:
    """Every paradigm name that can be requested (built-in and plugins), sorted."""
    return PARADIGMS.names()


def get(name: str) -> type:
    """The paradigm class registered as ``name``; imports a built-in module on first use."""
    return PARADIGMS.get(name)
def resolve(spec: str) -> list[type]:
    """Paradigm classes for a ``--paradigms`` value: ``all``, a comma list, and/or globs like ``ra-rec*``."""
    chosen: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all":
            matches = [n for n in names() if get(n).in_all]
        elif any(ch in part for ch in "*?["):
            matches = [n for n in names() if fnmatch.fnmatch(n, part)]
            if not matches:
                raise BenchError(f"--paradigms: no paradigm matches {part!r}; `bench list` shows them all")
        else:
            get(part)
            matches = [part]
        chosen.extend(m for m in matches if m not in chosen)
    if not chosen:
        raise BenchError("--paradigms is empty; pass e.g. --paradigms all or --paradigms pop,sasrec")
    return [get(n) for n in chosen]


#: Shared ``train`` keys a paradigm may set for itself (``paradigms.NAME.train.KEY``), e.g. chosen by tuning.
PER_PARADIGM_TRAIN = ("learning_rate", "weight_decay", "samples_per_user", "negatives")


def options_for(cls: type, cfg: Config) -> dict[str, Any]:
    """The paradigm's defaults overlaid with ``paradigms.NAME`` from the config; unknown keys are an error.
    A ``train`` entry (its own values of :data:`PER_PARADIGM_TRAIN` keys) is kept as given."""
    given = dict(cfg.get(f"paradigms.{cls.name}") or {})
    defaults = dict(getattr(cls, "defaults", {}))
    for key in given:
        if key == "train":
            _check_train_keys(cls.name, given["train"])
        elif key not in defaults:
            raise BenchError(f"unknown config key 'paradigms.{cls.name}.{key}'"
                             f"{suggest(key, defaults)}; its keys are: {', '.join(defaults) or '(none)'}, train")
    return {**defaults, **given}


def _check_train_keys(name: str, train: Any) -> None:
    if not isinstance(train, Mapping):
        raise BenchError(f"config key 'paradigms.{name}.train' must be a mapping of train keys, e.g. "
                         f"{{learning_rate: 0.003}}")
    for key in train:
        if key not in PER_PARADIGM_TRAIN:
            raise BenchError(f"config key 'paradigms.{name}.train.{key}' cannot differ per paradigm"
                             f"{suggest(key, PER_PARADIGM_TRAIN)}; these can: {', '.join(PER_PARADIGM_TRAIN)}")
