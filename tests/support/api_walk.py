"""The API's commands and events walked from their own dataclasses, and the lists of
docs/behaviour.md that classify them on `/call`.

A field is named by its dotted wire path from the command (`invite.option.vad.samplerate`); a command
itself by its name (`pause`). Everything here is computed from `protocol.api`, so a field added to a
dataclass shows up in the walk without any change to this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.api import COMMANDS, EVENTS
from protocol.api_codec import ANY, BOOL, BYTES, DURATION, FLOAT, INT, NESTED, OBJECT, STR, STR_MAP, FieldSpec, schema

ROOT = Path(__file__).resolve().parents[2]
BEHAVIOUR = ROOT / "docs" / "behaviour.md"
API_TXT = ROOT / "docs" / "api.txt"


@dataclass(frozen=True, slots=True)
class Node:
    """A command (``spec`` None) or one of its fields, at ``path``."""

    path: str
    command: str
    spec: FieldSpec | None
    owner: type             # the class the field is declared in (the command class for a command)

    @property
    def wire_path(self) -> str:
        """The path inside the command, as an error names it (``option.vad.samplerate``)."""
        return self.path.partition(".")[2]


def walk_fields(cls: type, prefix: str, command: str) -> Iterator[Node]:
    for spec in schema(cls).fields:
        path = f"{prefix}.{spec.wire}"
        yield Node(path, command, spec, cls)
        if spec.kind == NESTED:
            yield from walk_fields(spec.nested, path, command)


def walk_commands() -> list[Node]:
    """Every command and every field of it, options recursively, in declaration order."""
    nodes: list[Node] = []
    for name, cls in COMMANDS.items():
        nodes.append(Node(name, name, None, cls))
        nodes.extend(walk_fields(cls, name, name))
    return nodes


def event_fields(name: str) -> list[str]:
    """Wire names of an event's fields, ``event`` first, as the wire writes them."""
    return ["event", *(spec.wire for spec in schema(EVENTS[name]).fields)]


# --- values for a field ------------------------------------------------------------------------


def valid_value(spec: FieldSpec) -> Any:
    """A value the field accepts and that differs from its default."""
    kind = spec.kind
    if kind == STR:
        if spec.choices is not None:
            return spec.choices[-1]
        return "walk"
    if kind == BOOL:
        return True
    if kind == INT:
        if spec.choices is not None:
            return spec.choices[0]
        value = max(int(spec.lo or 0), 1)
        if spec.multiple:
            value = -(-value // spec.multiple) * spec.multiple
        return value
    if kind == FLOAT:
        lo = spec.lo or 0
        return lo + 0.5 if spec.hi is None or lo + 0.5 <= spec.hi else (lo + spec.hi) / 2
    if kind == DURATION:
        return "30s"
    if kind == STR_MAP:
        return {"X-Walk": "1"}
    if kind in (OBJECT, ANY):
        return {"walk": [1]}
    if kind == NESTED:
        return minimal(spec.nested)
    if kind == BYTES:
        return [0, 1]
    raise AssertionError(f"no value for kind {kind}")


def wrong_value(spec: FieldSpec) -> Any | None:
    """A value of the wrong JSON type for the field, or None where every JSON value is valid."""
    return {
        STR: 42, BOOL: "yes", INT: "1", FLOAT: "1", DURATION: True, STR_MAP: [1], OBJECT: "x", NESTED: 7,
        BYTES: "x", ANY: None,
    }[spec.kind]


def minimal(cls: type) -> dict[str, Any]:
    """The smallest valid JSON object of ``cls``: its required fields."""
    return {spec.wire: valid_value(spec) for spec in schema(cls).fields if spec.required}


def command_with(node: Node, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The command of ``node`` with ``value`` at the node's path, the required fields around it
    filled (from ``base``, a command object to start from, where it has them)."""
    cls = COMMANDS[node.command]
    message: dict[str, Any] = {"command": node.command, **minimal(cls), **(base or {})}
    parts = node.wire_path.split(".")
    target, owner = message, cls
    for part in parts[:-1]:
        spec = next(s for s in schema(owner).fields if s.wire == part)
        owner = spec.nested
        inner = target.get(part)
        target[part] = inner = {**minimal(owner), **(inner or {})}
        target = inner
    target[parts[-1]] = value
    return message


# --- docs/behaviour.md --------------------------------------------------------------------------


def doc_section(title: str, text: str | None = None) -> str:
    """The body of the markdown section whose heading is ``title`` (any level), up to the next heading."""
    text = BEHAVIOUR.read_text() if text is None else text
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", text, re.S | re.M)
    assert match, f"no section {title!r} in {BEHAVIOUR.name}"
    return match.group(1)


def doc_bullet_names(section: str) -> list[list[str]]:
    """The code-quoted names of each bullet of a section, up to the first colon outside a code
    span (the reason follows it)."""
    out = []
    for bullet in re.split(r"^- ", section, flags=re.M)[1:]:
        head, quoted = "", False
        for char in bullet:
            if char == "`":
                quoted = not quoted
            elif char == ":" and not quoted:
                break
            head += char
        out.append(re.findall(r"`([^`]+)`", head))
    return out
