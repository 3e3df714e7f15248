"""Read one rule file into plain data plus the line of every key, whatever its format.

YAML and JSON keep their line numbers through ruamel.yaml; TOML is parsed by ``tomllib`` and its
lines are found by a small scan of table headers and keys. Every failure becomes a ``Problem``.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lwd_rules.errors import Location, RuleError

MAX_FILE_BYTES = 1_048_576
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}

FieldPath = tuple[str | int, ...]


@dataclass
class RawRules:
    """A rule file's data as plain dicts/lists, and the line where each field path starts."""

    data: dict[str, Any]
    file: str
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def locate(self, path: FieldPath) -> Location:
        """The location of ``path``, or of its nearest located parent."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return Location(self.file, line)
        return Location(self.file, None)


def read_rule_file(path: Path) -> RawRules:
    """Read ``path`` (.yaml/.yml/.json/.toml); raise ``RuleError`` with a located problem if unusable."""
    name = str(path)
    here = Location(name, 1)  # whole-file problems point at the first line
    try:
        raw = _read_bytes(path, here)
    except OSError as exc:
        raise RuleError.single(here, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RuleError.single(Location(name, line), "", f"file is not UTF-8 (byte 0x{raw[exc.start]:02x})") from None
    return parse_text(text.removeprefix("\ufeff"), name, SUFFIXES[path.suffix.lower()])


def _read_bytes(path: Path, here: Location) -> bytes:
    """The file's bytes, after the checks that keep a bad path from hanging or flooding memory."""
    if not path.exists():
        raise RuleError.single(here, "", "no such file")
    if path.is_dir():
        raise RuleError.single(here, "", "is a directory, not a rule file")
    if path.suffix.lower() not in SUFFIXES:
        raise RuleError.single(here, "", f"unknown rule file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise RuleError.single(here, "", "not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RuleError.single(here, "", f"file is {size} bytes; rule files are limited to {MAX_FILE_BYTES}")
    return path.read_bytes()


def parse_text(text: str, file: str, fmt: str) -> RawRules:
    """Parse rule-file text of format ``yaml``, ``json`` or ``toml``."""
    if not text.strip():
        raise RuleError.single(Location(file, 1), "", "file is empty")
    parse = {"yaml": _parse_yaml, "json": _parse_json, "toml": _parse_toml}[fmt]
    data, lines = parse(text, file)
    if data is None:
        raise RuleError.single(Location(file, 1), "", "file is empty")
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise RuleError.single(Location(file, 1), "", f"a rule file must be a mapping of keys, got {kind}")
    lines.setdefault((), 1)
    return RawRules(dict(data), file, lines)


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    return yaml


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[FieldPath, int]]:
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        node = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise RuleError.single(Location(file, line), "", f"YAML syntax error: {message}") from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise RuleError.single(Location(file, 1), "", f"YAML syntax error: {first}") from None
    lines: dict[FieldPath, int] = {}
    return _plain(node, (), lines), lines


def _plain(node: Any, path: FieldPath, lines: dict[FieldPath, int]) -> Any:
    """Turn ruamel's round-trip nodes into plain Python values, recording each child's line."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            key_text = str(key)
            try:
                lines[path + (key_text,)] = node.lc.key(key)[0] + 1
            except KeyError:  # a key merged in with `<<: *anchor` has no position of its own here
                lines[path + (key_text,)] = node.lc.line + 1
            out[key_text] = _plain(value, path + (key_text,), lines)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for index, value in enumerate(node):
            lines[path + (index,)] = node.lc.item(index)[0] + 1
            out_list.append(_plain(value, path + (index,), lines))
        return out_list
    if isinstance(node, bool) or node is None:
        return node
    for kind in (int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


def _parse_json(text: str, file: str) -> tuple[Any, dict[FieldPath, int]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuleError.single(Location(file, exc.lineno), "", f"JSON syntax error: {exc.msg} (column {exc.colno})") from None
    lines: dict[FieldPath, int] = {}
    try:  # JSON is YAML 1.2: reuse its marks for line numbers
        _plain(_yaml().load(text), (), lines)
    except Exception:  # noqa: BLE001 - positions are a courtesy; the data came from json
        lines = {}
    return data, lines


_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")
_TOML_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'")
_TOML_ELEMENT = re.compile(r"\{[^{}]*\}|[^,\s\[\]{}][^,\[\]{}]*")
_TOML_INLINE_KEY = re.compile(r"([A-Za-z0-9_\-]+)\s*=")


def _toml_keys(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


def _parse_toml(text: str, file: str) -> tuple[Any, dict[FieldPath, int]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(found.group(1)) if found else 1
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message) or "invalid TOML"
        raise RuleError.single(Location(file, line), "", f"TOML syntax error: {message}") from None
    lines: dict[FieldPath, int] = {}
    table: FieldPath = ()
    array_counts: dict[FieldPath, int] = {}
    array: FieldPath | None = None  # a multi-line inline array being read, with its item count and depth
    item = depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        bare = _TOML_STRING.sub('""', line).split("#", 1)[0]  # strings blanked first: a '#' inside one is no comment
        if array is not None:
            for element in _TOML_ELEMENT.finditer(bare):
                if depth == 1:
                    lines.setdefault(array + (item,), number)
                    for key in _TOML_INLINE_KEY.findall(element.group(0)):
                        lines.setdefault(array + (item, key), number)
                    item += 1
            depth += bare.count("[") - bare.count("]")
            if depth <= 0:
                array = None
            continue
        header = _TOML_HEADER.match(line)
        if header:
            keys = tuple(_toml_keys(header.group(2)))
            if header.group(1) == "[[":
                index = array_counts.get(keys, 0)
                array_counts[keys] = index + 1
                lines.setdefault(keys, number)
                table = keys + (index,)
            else:
                table = keys
            lines.setdefault(table, number)
            continue
        key = _TOML_KEY.match(line)
        if key and not line.lstrip().startswith("#"):
            path = table + tuple(_toml_keys(key.group(1)))
            lines.setdefault(path, number)
            value = bare[bare.index("=") + 1 :].strip()
            if value.startswith("[") and value.count("[") > value.count("]"):
                array, item, depth = path, 0, value.count("[") - value.count("]")
    return data, lines
