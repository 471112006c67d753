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


def _intra_imports(room: str) -> dict[str, set[str]]:
    """module -> the modules of the same room it imports (relative or absolute, TYPE_CHECKING too)."""
    graph: dict[str, set[str]] = {}
    for path in modules(room):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:
                    deps.update(alias.name for alias in node.names)
                elif node.module and node.module.startswith(room + "."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith(room + "."))
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_inside_actors():
    graph = _intra_imports("actors")
    graph.pop("__init__", None)
    assert "call" in graph and "call_playback" in graph
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_check_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_transports_are_not_imported_by_protocol_nor_actors_and_the_call_has_no_leg_branch():
    call = (ROOT / "actors" / "call.py").read_text()
    for kind in ('"websocket"', '"sip"', '"webrtc"', "call_type =="):
        assert kind not in call, f"actors/call.py branches on the call type ({kind})"
