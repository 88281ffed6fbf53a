"""The paradigm registry (the contract itself lives in :mod:`bench.contract` and is re-exported here).

A paradigm is a class with ``fit(split, context)``, ``score(users, stage)`` and ``token_usage(users, stage)``,
registered with :func:`register`. Built-in paradigms are imported lazily, on first use; third-party packages
register through the entry-point group ``bench.paradigms`` (name = paradigm name, value = ``module:Class``
or a module that registers on import). Registration validates the class (pluggy-style), so a broken
plugin fails when it is loaded, with its package named, not halfway through a run.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
import warnings
from importlib import metadata
from typing import Any, Mapping

from bench.config import Config, suggest
from bench.contract import Context, Paradigm, SplitView, TokenUsage
from bench.errors import BenchError

__all__ = ["Context", "Paradigm", "SplitView", "TokenUsage", "get", "names", "options_for", "register", "resolve"]

ENTRY_POINT_GROUP = "bench.paradigms"
#: Built-in paradigm name -> module that registers it (imported only when the paradigm is needed).
BUILTIN: dict[str, str] = {
    "pop": "paradigms.baselines",
    "sasrec": "paradigms.baselines",
    "id-direct": "paradigms.id_direct",
    "id-translation": "paradigms.id_translation",
    "ra-rec": "paradigms.ra_rec",
    "ra-rec-noid": "paradigms.ra_rec",
    "ra-rec-input": "paradigms.ra_rec",
    "ra-rec-noinst": "paradigms.ra_rec",
    "ra-rec-noinfonce": "paradigms.ra_rec",
    "ra-rec-untrained": "paradigms.ra_rec",
    "ra-rec-items": "paradigms.ra_rec_items",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


_REGISTRY: dict[str, type] = {}
_ORIGIN: dict[str, str] = {}
_PLUGINS_LOADED = False
_PLUGIN_ERRORS: dict[str, str] = {}


def _check_contract(cls: type, name: str) -> None:
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


def register(name: str | None = None):
    """Class decorator: register a paradigm under ``name`` (default: the class's ``name`` attribute).

    Raises ``ValueError`` for a bad or duplicate name and ``TypeError`` when the contract is not met.
    """

    def decorate(cls: type) -> type:
        key = name or getattr(cls, "name", "")
        if not isinstance(key, str) or not _NAME.match(key):
            raise ValueError(f"paradigm name {key!r} is invalid: use lower case letters, digits, '-', '_', '.'")
        _check_contract(cls, key)
        origin = f"{cls.__module__}.{cls.__qualname__}"
        if key in _REGISTRY and _ORIGIN[key] != origin:
            raise ValueError(f"paradigm '{key}' is already registered by {_ORIGIN[key]}; {origin} must use "
                             "another name")
        cls.name = key
        _REGISTRY[key] = cls
        _ORIGIN[key] = origin
        return cls

    return decorate


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist else ep.value
        try:
            if ep.name in BUILTIN:
                raise ValueError(f"the name '{ep.name}' belongs to a built-in paradigm; register under another name")
            obj = ep.load()
            if isinstance(obj, type) and ep.name not in _REGISTRY:
                register(ep.name)(obj)
            elif ep.name not in _REGISTRY:
                raise TypeError(f"entry point {ep.value} registered no paradigm '{ep.name}'")
        except Exception as exc:  # a broken plugin must not take the others down
            _PLUGIN_ERRORS[ep.name] = f"{package}: {exc}"
            warnings.warn(f"skipping paradigm plugin '{ep.name}' from package {package}: {exc}", stacklevel=2)


def names() -> list[str]:
    """Every paradigm name that can be requested (built-in and plugins), sorted."""
    _load_plugins()
    return sorted(set(BUILTIN) | set(_REGISTRY))


def get(name: str) -> type:
    """The paradigm class registered as ``name``; imports a built-in module on first use."""
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _PLUGIN_ERRORS:
        raise BenchError(f"paradigm '{name}' failed to load ({_PLUGIN_ERRORS[name]})")
    raise BenchError(f"unknown paradigm '{name}'{suggest(name, names())}; `bench list` shows them all")


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


def options_for(cls: type, cfg: Config) -> dict[str, Any]:
    """The paradigm's defaults overlaid with ``paradigms.NAME`` from the config; unknown keys are an error."""
    given = dict(cfg.get(f"paradigms.{cls.name}") or {})
    defaults = dict(getattr(cls, "defaults", {}))
    for key in given:
        if key not in defaults:
            raise BenchError(f"unknown config key 'paradigms.{cls.name}.{key}'"
                             f"{suggest(key, defaults)}; its keys are: {', '.join(defaults) or '(none)'}")
    return {**defaults, **given}
