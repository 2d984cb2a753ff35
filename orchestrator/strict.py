"""Strict YAML and strict typed records, shared by grids and cluster profiles.

`load_yaml` uses PyYAML's safe loader (never constructs Python objects) with two fixes:
duplicate keys are errors (PyYAML silently keeps the last), and `1e-5` is a number (YAML 1.1
reads it as a string; YAML 1.2 and every user read it as 1e-05).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trainer.errors import UserError
from trainer.spec import SpecError, coerce_type, type_name


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads YAML 1.2 floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise UserError(f"{self.name}: key '{key}' appears twice (lines {seen[key]} and {line}); keys must be unique")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 core-schema floats, so `1e-5`, `-2.5E3` and `.5` are numbers.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file strictly; any problem is one UserError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what} file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read {what} ({err})") from None
    try:
        loader = StrictLoader(text)
        loader.name = str(path)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build frozen dataclass `cls` from a mapping: unknown keys and wrong types are errors."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: must be a mapping of key: value, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise UserError(f"{where}: unknown key '{key}'; allowed: {', '.join(allowed)}")
        try:
            kwargs[key] = coerce_type(hints[key], value)
        except TypeError:
            raise UserError(f"{where}: key '{key}' must be {type_name(hints[key])}, got {value!r}") from None
    try:
        return cls(**kwargs)
    except (SpecError, UserError) as err:
        raise UserError(f"{where}: {err}") from None
    except TypeError as err:  # a required key is missing
        raise UserError(f"{where}: {err}; allowed keys: {', '.join(allowed)}") from None
