"""What a run will compute: the arms (paradigm x config variant) and the (arm, seed) jobs.

Without ``--sweep`` an arm is a paradigm under the run's config. ``--sweep KEY=V1,V2,...`` turns each swept
paradigm into one arm per value, labelled ``NAME[LAST_KEY_PART=VALUE]`` (e.g. ``ra-rec[train_fraction=0.1]``).
A ``paradigms.NAME.KEY`` sweep sweeps only ``NAME`` (the other paradigms of the run are computed once, as
references); a ``train.*`` or ``llm.*`` sweep sweeps every paradigm. The split, the encoder and the backbone
are shared by all arms of a run, so their keys cannot be swept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from bench import registry
from bench.config import Config, nested, thaw, with_overrides
from bench.errors import BenchError

SWEEPABLE = ("paradigms.", "train.", "llm.token_budget", "llm.item_max_tokens", "llm.batch_size")


@dataclass(frozen=True)
class Sweep:
    """One config key and the values it takes."""

    key: str
    values: tuple

    @property
    def short(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def swept_paradigm(self) -> str | None:
        """``NAME`` for a ``paradigms.NAME.KEY`` sweep, else None (every paradigm is swept)."""
        parts = self.key.split(".")
        return parts[1] if parts[0] == "paradigms" else None


@dataclass(frozen=True)
class Arm:
    """A paradigm under one config: ``label`` names it in every output file."""

    label: str
    cls: type
    options: dict
    config: Config
    sweep_value: Any = None


def parse_sweep(text: str | None) -> Sweep | None:
    """``KEY=V1,V2,...`` -> :class:`Sweep` (values parsed as YAML scalars); None stays None."""
    if not text:
        return None
    key, sep, raw = text.partition("=")
    key = key.strip()
    values = tuple(yaml.safe_load(v) for v in raw.split(",") if v.strip())
    if not sep or not key or len(values) < 2:
        raise BenchError(f"--sweep {text!r}: expected KEY=V1,V2,... with at least two values, "
                         "e.g. --sweep paradigms.ra-rec.train_fraction=0.1,0.5,1.0")
    if not key.startswith(SWEEPABLE):
        raise BenchError(f"--sweep {key}: only paradigms.*, train.* and llm.token_budget/item_max_tokens/"
                         "batch_size can be swept (the split, encoder and backbone are shared by a run's arms); "
                         "run other values as separate runs and compare them with `bench compare`")
    if len(set(map(repr, values))) != len(values):
        raise BenchError(f"--sweep {text!r}: a value is repeated")
    return Sweep(key, values)


def arms(spec: str, cfg: Config, sweep: Sweep | None = None) -> list[Arm]:
    """The arms of a run, in run order (paradigm order of ``spec``; values in ``--sweep`` order)."""
    classes = registry.resolve(spec)
    if sweep is None:
        return [_arm(cls.name, cls, cfg) for cls in classes]
    target = sweep.swept_paradigm()
    if target is not None and target not in [cls.name for cls in classes]:
        raise BenchError(f"--sweep {sweep.key}: paradigm {target!r} is not among --paradigms {spec!r}")
    out = []
    for cls in classes:
        if target is not None and cls.name != target:
            out.append(_arm(cls.name, cls, cfg))
            continue
        for value in sweep.values:
            variant = with_overrides(cfg, [nested(sweep.key, value)])
            out.append(_arm(f"{cls.name}[{sweep.short}={value}]", cls, variant, value))
    return out


def _arm(label: str, cls: type, cfg: Config, value: Any = None) -> Arm:
    """The arm of ``cls`` under ``cfg``; a ``paradigms.NAME.train`` entry overrides the shared ``train`` keys in
    the arm's config (and stays in its options, so the manifest records it)."""
    options = registry.options_for(cls, cfg)
    if not options.get("train"):
        return Arm(label, cls, options, cfg, value)
    options["train"] = thaw(options["train"])
    try:
        variant = with_overrides(cfg, [{"train": options["train"]}])
    except BenchError as exc:
        raise BenchError(f"paradigms.{cls.name}.train: {exc}") from None
    return Arm(label, cls, options, variant, value)


def sweep_record(sweep: Sweep | None, run_arms: list[Arm]) -> dict | None:
    """The manifest's ``sweep`` entry: key, values and, per swept label, its paradigm and value."""
    if sweep is None:
        return None
    labels = {a.label: {"paradigm": a.cls.name, "value": a.sweep_value} for a in run_arms if a.label != a.cls.name}
    return {"key": sweep.key, "values": list(sweep.values), "labels": labels}
