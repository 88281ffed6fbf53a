"""One frozen configuration object: defaults < preset < --config FILE < --set key=value.

``configs/default.yaml`` is the schema: a key that is not in it is rejected with a did-you-mean
suggestion, and a value whose type differs from the default's is rejected. Two sections are open
mappings whose keys are checked later by their owners: ``encoder.params`` (passed to RecBole) and
``paradigms`` (each paradigm checks its own section against its ``defaults``).
YAML is read as data only (``yaml.safe_load``): no templates, no code.
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import yaml

from bench.errors import BenchError
from bench.protocols import parse_protocols

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULTS_FILE = CONFIG_DIR / "default.yaml"
PRESET_DIR = CONFIG_DIR / "presets"
OPEN_SECTIONS = ("encoder.params", "paradigms")


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable (dict/list) deep copy of a frozen config value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def stable_hash(value: Any, length: int = 12) -> str:
    """Hex sha256 of the canonical JSON of ``value`` (sorted keys), truncated to ``length``."""
    text = json.dumps(thaw(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Config:
    """The resolved configuration of a run: an immutable tree addressed by dotted keys."""

    tree: Mapping[str, Any]

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self.tree
        for part in dotted.split("."):
            node = node[part]
        return node

    def get(self, dotted: str, default: Any = None) -> Any:
        try:
            return self[dotted]
        except (KeyError, TypeError):
            return default

    @property
    def hash(self) -> str:
        """Stable 12-hex-digit hash of the whole tree (used in run-directory names)."""
        return stable_hash(self.tree)

    def section_hash(self, *dotted: str) -> str:
        """Hash of some sections only, for cache keys that depend on part of the config."""
        return stable_hash({d: self.get(d) for d in dotted})

    def to_dict(self) -> dict:
        return thaw(self.tree)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise BenchError(f"config file {path} does not exist: check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise BenchError(f"{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def presets() -> list[str]:
    """Names of the presets shipped in configs/presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping) and dotted not in OPEN_SECTIONS:
            keys.extend(_flat_keys(value, dotted + "."))
    return keys


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)
    return isinstance(value, type(default))


def _merge(base: dict, layer: Mapping, schema: Mapping, source: str, prefix: str = "") -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema:
            valid = _flat_keys(schema, prefix)
            raise BenchError(f"{source}: unknown config key '{dotted}'{suggest(dotted, valid)}")
        default = schema[key]
        if isinstance(default, (list, tuple)) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # --set report.ks=5 means [5]
        if not _type_ok(default, value):
            raise BenchError(
                f"{source}: config key '{dotted}' expects {type(default).__name__}, got {value!r}"
            )
        if dotted in OPEN_SECTIONS:
            base[key] = _deep_update(copy.deepcopy(base.get(key) or {}), value)
        elif isinstance(default, Mapping):
            _merge(base[key], value, default, source, dotted + ".")
        else:
            base[key] = copy.deepcopy(value)


def _deep_update(base: dict, layer: Mapping) -> dict:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def parse_override(text: str) -> dict:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML scalar/list."""
    if "=" not in text:
        raise BenchError(f"--set {text!r}: expected KEY=VALUE, e.g. --set data.max_users=200")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise BenchError(f"--set {text!r}: the key is empty; expected KEY=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return nested(key, value)


def nested(dotted: str, value: Any) -> dict:
    """``nested("a.b.c", v)`` -> ``{"a": {"b": {"c": v}}}``, an override layer for one dotted key."""
    root: dict = {}
    node = root
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return root


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?:[^#]*#\s*(?P<note>[^:]*):)?")
_RANGE = re.compile(r"^[\w|\[\]]+\s+(?:(?P<op>>=|>)\s*(?P<bound>-?[\d.]+)"
                    r"|in\s+(?P<lo_br>[\[(])\s*(?P<lo>-?[\d.]+)\s*,\s*(?P<hi>-?[\d.]+)\s*(?P<hi_br>[\])]))$")


@dataclass(frozen=True)
class Range:
    """An allowed interval of a numeric config key, as written in its ``configs/default.yaml`` comment."""

    text: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


def _parse_range(note: str) -> Range | None:
    match = _RANGE.match(note.strip())
    if not match:
        return None
    if match["op"]:
        return Range(note.strip(), low=float(match["bound"]), low_open=match["op"] == ">")
    return Range(note.strip(), low=float(match["lo"]), high=float(match["hi"]),
                 low_open=match["lo_br"] == "(", high_open=match["hi_br"] == ")")


@functools.lru_cache(maxsize=None)
def ranges(path: Path = DEFAULTS_FILE) -> dict[str, Range]:
    """Dotted key -> allowed range, read from the ``TYPE >= N:`` / ``TYPE in (A, B):`` comments of ``path``."""
    found, stack = {}, []
    for line in path.read_text().splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            continue
        stack = [s for s in stack if s[0] < len(match["indent"])] + [(len(match["indent"]), match["key"])]
        parsed = _parse_range(match["note"] or "")
        if parsed:
            found[".".join(key for _, key in stack)] = parsed
    return found


def _check_ranges(tree: Mapping, prefix: str = "") -> None:
    for dotted, allowed in ranges().items():
        if not dotted.startswith(prefix):
            continue
        value = Config(tree).get(dotted)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and not allowed.admits(item):
                raise BenchError(f"config key '{dotted}' must be {allowed.text.split(' ', 1)[1]}, got {item!r} "
                                 f"(range documented in configs/{DEFAULTS_FILE.name})")


def _check_values(tree: Mapping) -> None:
    _check_ranges(tree)
    if tree["device"] not in ("auto", "cpu", "cuda"):
        raise BenchError(f"config key 'device' must be auto, cpu or cuda, got {tree['device']!r}")
    if not tree["seeds"] or not all(isinstance(s, int) and not isinstance(s, bool) for s in tree["seeds"]):
        raise BenchError(f"config key 'seeds' must be a non-empty list of integers, got {list(tree['seeds'])!r}")
    if not tree["eval"]["ks"] or not all(isinstance(k, int) and k > 0 for k in tree["eval"]["ks"]):
        raise BenchError("config key 'eval.ks' must be a non-empty list of positive integers")
    parse_protocols(tree["eval"]["protocols"])
    _check_report(tree["report"])
    if not re.match(r"^(https?|file)://", tree["data"]["hub_url"] or ""):
        raise BenchError(f"config key 'data.hub_url' must be an http://, https:// or file:// URL (the folder "
                         f"holding Amazon_Books.zip), got {tree['data']['hub_url']!r}")


def _check_report(section: Mapping) -> None:
    for metric in section["metrics"]:
        name, _, k = str(metric).partition("@")
        if not name or not k.isdigit() or int(k) < 1:
            raise BenchError(f"config key 'report.metrics': {metric!r} is not METRIC@K with K >= 1 (e.g. ndcg@10)")
    if section["test"] not in ("t", "wilcoxon"):
        raise BenchError(f"config key 'report.test' must be t or wilcoxon, got {section['test']!r}")


def load_config(
    preset: str | None = "default",
    config_file: str | Path | None = None,
    overrides: Iterable[str | Mapping] = (),
    check_values: bool = True,
) -> Config:
    """Resolve the run configuration.

    ``overrides`` holds ``"key=value"`` strings (from ``--set``) or ready nested mappings, applied in order.
    Raises :class:`BenchError` naming the file or flag and the key for any unknown key or wrong type.
    ``check_values=False`` skips the value ranges: a saved run's config is a record of what ran, readable after a
    range was tightened (``data.min_user_inter`` once admitted 3).
    """
    schema = _read_yaml(DEFAULTS_FILE)
    tree = copy.deepcopy(schema)
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise BenchError(f"unknown preset '{preset}'{suggest(preset, presets())}; "
                             f"available: {', '.join(presets())}")
        _merge(tree, _read_yaml(path), schema, f"preset {preset} ({path})")
    if config_file:
        _merge(tree, _read_yaml(Path(config_file)), schema, str(config_file))
    _apply(tree, overrides, schema)
    if check_values:
        _check_values(tree)
    return Config(_freeze(tree))


def check_report_values(cfg: Config) -> None:
    """The value checks of the ``report`` section alone: what ``bench report --set`` may change in a saved run,
    whose other sections are a record and are not checked again."""
    _check_ranges(cfg.tree, "report.")
    _check_report(cfg["report"])


def with_overrides(cfg: Config, overrides: Iterable[str | Mapping]) -> Config:
    """``cfg`` with more ``--set``-style overrides applied and validated like :func:`load_config`'s."""
    schema = _read_yaml(DEFAULTS_FILE)
    tree = cfg.to_dict()
    _apply(tree, overrides, schema)
    _check_values(tree)
    return Config(_freeze(tree))


def _apply(tree: dict, overrides: Iterable[str | Mapping], schema: Mapping) -> None:
    for item in overrides:
        layer = parse_override(item) if isinstance(item, str) else item
        source = f"--set {item}" if isinstance(item, str) else "command line"
        _merge(tree, layer, schema, source)
