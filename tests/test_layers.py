"""The three rooms: protocol/ is pure, actors/ never reaches into transports/ nor takes locks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(room: str) -> list[Path]:
    found = sorted((ROOT / room).rglob("*.py"))
    assert found, f"no modules under {room}/"
    return found


def test_protocol_imports_neither_asyncio_nor_socket_nor_other_rooms():
    banned = ("asyncio", "socket", "selectors", "actors", "transports", "aiohttp")
    for path in modules("protocol"):
        for name in imports_of(path):
            assert name.split(".")[0] not in banned, f"{path.relative_to(ROOT)} imports {name}"


def test_actors_never_import_transports():
    for path in modules("actors"):
        for name in imports_of(path):
            assert name.split(".")[0] != "transports", f"{path.relative_to(ROOT)} imports {name}"


def test_actors_take_no_locks():
    for path in modules("actors"):
        text = path.read_text()
        for lock in ("threading.Lock", "asyncio.Lock", "threading.RLock"):
            assert lock not in text, f"{path.relative_to(ROOT)} uses {lock}"
