"""Grid files: strict YAML -> validated trial specs. Pure: reads one file, writes nothing.

    name: cifar10-resnet20-alpha          # the sweep's folder name under the results root
    description: free text                # optional
    fixed: {model: resnet20, epochs: 160} # any TrialSpec field but `sweep`
    sweep:                                # axes; trials = their cartesian product, in file order
      alpha: [-10, 0, 10]
      seed: [0, 1, 2]

Every error is one line naming the file, the key and what is allowed (quoting at most ~80
characters of a value); the whole grid is validated before anything is written or submitted.
The name must be text and match NAME_RE to its very end (`\\Z`: `$` would let "x\\n" through).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.strict import load_yaml
from trainer.errors import UserError
from trainer.spec import IN_TRIAL_ID, LABEL_FIELDS, SpecError, TrialSpec, coerce, field_names, quote

GRID_KEYS = ("name", "description", "fixed", "sweep")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")  # \Z, not $: no trailing newline
MAX_TRIALS = 100_000


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    path: Path
    specs: tuple[TrialSpec, ...]  # unique by trial_id, in expansion order
    axes: tuple[str, ...]  # swept fields, in file order
    n_expanded: int  # before duplicates collapsed


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None, overrides_from: str | Path | None = None) -> Grid:
    """Load and validate a grid file; `overrides` are resource fields (e.g. from a cluster profile,
    the file `overrides_from`: a value of its own that no trial takes is named there, not in the grid)."""
    path = Path(path)
    raw = load_yaml(path, "grid")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a grid must be a mapping with keys {', '.join(GRID_KEYS)}")
    for key in raw:
        if key not in GRID_KEYS:
            profile = " (this looks like a cluster profile: pass it with --cluster)" if "backend" in raw else ""
            raise UserError(f"{path}: unknown top-level key {quote(key)}; allowed: {', '.join(GRID_KEYS)}{profile}")
    name = _name(raw.get("name"), path)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{path}: key 'description' must be text")
    fixed = _section(raw, "fixed", path)
    axes = _section(raw, "sweep", path)
    fields = [f for f in field_names() if f != "sweep"]

    for section, values in (("fixed", fixed), ("sweep", axes)):
        for key in values:
            if key not in fields:
                raise UserError(f"{path}: unknown field {quote(f'{section}.{key}')}; allowed: {', '.join(fields)}")
    for key in fixed.keys() & axes.keys():
        raise UserError(f"{path}: field '{key}' is both in 'fixed' and in 'sweep'; give it in one place")

    fixed = {k: coerce(k, v, f"{path}: fixed") for k, v in fixed.items()}
    checked_axes: dict[str, list[Any]] = {}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: sweep axis '{key}' must be a non-empty list of values, got {quote(values)}")
        checked_axes[key] = [coerce(key, v, f"{path}: sweep.{key}[{i}]") for i, v in enumerate(values)]

    for key, swept in checked_axes.items():
        if key not in IN_TRIAL_ID and len(set(map(repr, swept))) > 1:
            # Not part of a trial's identity: every value after the first would collapse into the
            # first value's trial (seen: ablation_draws [1, 10] ran only 1).
            role = "a label (what the analyses after training do)" if key in LABEL_FIELDS else "a resource (how a trial runs)"
            raise UserError(
                f"{path}: sweep axis '{key}' has {len(swept)} values, but '{key}' is {role} and not part of a trial's identity, "
                "so trials differing only in it are one trial; allowed: one value, in 'fixed'"
            )
    n_expanded = 1
    for axis in checked_axes.values():
        n_expanded *= len(axis)
    if n_expanded > MAX_TRIALS:
        raise UserError(f"{path}: the sweep expands to {n_expanded} trials; allowed: at most {MAX_TRIALS}")

    specs: dict[str, TrialSpec] = {}
    for combo in itertools.product(*checked_axes.values()):
        point = dict(zip(checked_axes, combo))
        data = {**fixed, **point, **(overrides or {}), "sweep": name}
        try:
            spec = TrialSpec(**data)
        except SpecError as err:
            said = re.match(r"field '(\w+)' (.*)", str(err), re.S)
            if overrides_from is not None and said and said[1] in (overrides or {}):
                raise UserError(f"{overrides_from}: key '{said[1]}' {said[2]}") from None
            at = ", ".join(f"{k}={quote(v, 40) if isinstance(v, (str, tuple)) else v}" for k, v in point.items())
            raise UserError(f"{path}: trial ({at or 'fixed only'}): {err}") from None
        specs.setdefault(spec.trial_id, spec)
    return Grid(name, description, path, tuple(specs.values()), tuple(checked_axes), n_expanded)


def _name(name: Any, path: Path) -> str:
    """The grid's name: text matching NAME_RE in full; a number gets the quoting hint."""
    allowed = "1-100 letters, digits, '.', '_', '-', starting with a letter or digit"
    if name is None:
        raise UserError(f"{path}: key 'name' is missing; allowed: {allowed} (the sweep's folder under the results root)")
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        # Not "write name: \"<the number>\"": YAML read `0123`, `2024_01` or `1e3` as 123, 202401, 1000.0.
        raise UserError(
            f"{path}: key 'name' is a number to YAML (read as {quote(name)}); "
            'a name must be text: put it in quotes exactly as you meant it, name: "..."'
        )
    if not isinstance(name, str):
        raise UserError(f"{path}: key 'name' must be text, got {quote(name)} ({type(name).__name__}); allowed: {allowed}")
    if not NAME_RE.match(name):
        raise UserError(f"{path}: key 'name' is {quote(name)}; allowed: {allowed}")
    return name


def _section(raw: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: key '{key}' must be a mapping of field: value, got {type(value).__name__}")
    return value
