"""Strict YAML and strict typed records, shared by grids and cluster profiles.

`load_yaml` uses PyYAML's safe loader (never constructs Python objects) with YAML 1.2's numbers
and stricter keys: duplicate keys are errors (PyYAML silently keeps the last); a key must be a
plain value, not a list or mapping; merge keys (`<<: *defaults`) work as in PyYAML, a key written
out overriding a merged one; and numbers are read as YAML 1.2 and every user reads them: `1e-5` is
a number (YAML 1.1 reads it as a string), `010` is 10 and `1:00` is text (YAML 1.1 reads octal 8
and sexagesimal 60, a value the user did not write).

It also bounds what a file can cost before anything is built from it: at most MAX_BYTES of text,
and at most MAX_NODES values once aliases are expanded (a "billion laughs" document of a few
hundred bytes expands to billions; its node graph is counted while still small, before any
expansion). Only regular files are read (a FIFO would block, a folder is no grid), and every
error message quotes at most ~80 characters of a value (`trainer.spec.quote`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trainer.errors import UserError
from trainer.spec import SpecError, coerce_type, quote, type_name

MAX_BYTES = 1_000_000  # a grid or profile is a page of text; anything this big is a mistake
MAX_NODES = 100_000  # values in the document with every alias expanded


MERGE = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate and non-scalar keys and reads YAML 1.2 numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:  # the keys as written (merged ones may be overridden: not duplicates)
            line = key_node.start_mark.line + 1
            if key_node.tag == MERGE:
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # a list or mapping as a key: no field is named so
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise UserError(f"{self.name}: a key at line {line} is a {kind}; a key must be a name (text)")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"{self.name}: key {quote(key)} appears twice (lines {seen[key]} and {line}); keys must be unique")
            seen[key] = line
        self.flatten_mapping(node)  # merge keys; SafeConstructor's own call then finds none left
        for key_node, _ in node.value:  # merged keys, from the mappings `<<` names
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                raise UserError(f"{self.name}: a key at line {line} is a list or mapping; a key must be a name (text)")
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.2 core integers (the resolver below): decimal (with `_` allowed), 0o octal, 0x hex."""
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        return sign * int(digits, 10)


# YAML 1.2 core-schema numbers instead of YAML 1.1's: `1e-5`, `-2.5E3` and `.5` are floats; `010`
# is 10 (1.1: octal 8), `1:00` is text (1.1: 60), `0b11` is text.
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
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
    text = _read_text(path, what)
    try:
        loader = StrictLoader(text)  # the reader refuses control characters here (NUL, ESC of a pasted colour code)
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = f"{err.character:#04x}" if isinstance(err.character, int) else repr(err.character)
        where = f"line {line}, column {column}"
        raise UserError(f"{path}: malformed YAML at {where}: control character {char} (not allowed in YAML text)") from None
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem[:200]}") from None
    except RecursionError:
        raise UserError(f"{path}: malformed YAML: nested too deeply") from None
    except UserError:
        raise
    except ValueError as err:  # e.g. an integer literal of thousands of digits
        raise UserError(f"{path}: malformed YAML: {str(err)[:200]}") from None
    finally:
        loader.dispose()


def _read_text(path: Path, what: str) -> str:
    """The file's text: a regular file of at most MAX_BYTES of UTF-8, else one UserError line."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path}: a folder, not a {what} file; give the YAML file itself")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: not a regular file (a FIFO, socket or device); give a {what} file")
    if st.st_size > MAX_BYTES:
        raise UserError(f"{path}: {st.st_size} bytes; a {what} file may have at most {MAX_BYTES}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: more than {MAX_BYTES} bytes; a {what} file may have at most {MAX_BYTES}")
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: cannot read {what} (not UTF-8 text: {err.reason} at byte {err.start})") from None


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Refuse a document with more than MAX_NODES values once its aliases are expanded, or a
    recursive alias. Counted on the node graph (each node once, iteratively): cheap whatever
    the expansion would be."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        kids = _children(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[key] > MAX_NODES:
                raise UserError(
                    f"{path}: the document expands to more than {MAX_NODES} values (YAML aliases: *name); "
                    "write the values out, or use fewer nested aliases"
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise UserError(f"{path}: malformed YAML: a recursive alias (a value that contains itself)")
        on_path.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in on_path:
                raise UserError(f"{path}: malformed YAML: a recursive alias (a value that contains itself)")
            if id(kid) not in sizes:
                stack.append((kid, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


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
            raise UserError(f"{where}: unknown key {quote(key)}; allowed: {', '.join(allowed)}")
        try:
            kwargs[key] = coerce_type(hints[key], value)
        except TypeError:
            raise UserError(f"{where}: key '{key}' must be {type_name(hints[key])}, got {quote(value)}") from None
    try:
        return cls(**kwargs)
    except (SpecError, UserError) as err:
        raise UserError(f"{where}: {err}") from None
    except TypeError as err:  # a required key is missing
        raise UserError(f"{where}: {err}; allowed keys: {', '.join(allowed)}") from None
