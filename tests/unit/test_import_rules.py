"""The room rules of DESIGN.md ("Packages and their rooms"), pinned: which package of gateway/ may
import which. Read from the source with `ast` (every import, at any depth), so an import inside
a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

# room -> the rooms it may import besides itself ("*": anything). A room is a package under
# gateway/ (api/grpc_native and api/openai count as their own); top-level modules (daemon, cli,
# supervisor, registry_sidecar) compose the rooms and may import anything.
ALLOWED = {
    "core": set(),
    "api": {"core", "api.grpc_native", "api.openai", "service.facade", "_proto", "monitoring"},
    "api.openai": {"core", "api", "service.facade"},
    "api.grpc_native": set(),
    "service": {"core", "cache", "routing", "scheduler", "executors", "monitoring", "text", "native", "service"},
    "cache": {"core"},
    "routing": {"core"},
    "scheduler": {"core", "executors", "native", "text"},
    "executors": {"core"},
    "text": {"core"},
    "monitoring": {"core", "native"},
    "registry": {"core"},
    "native": set(),
    "tools": {"*"},
    "_proto": set(),
}

# Known breaks, each to be removed as the seam is fixed (issue: "the facade as the only door").
# Keep this list shrinking: a new entry needs a reason.
KNOWN = {
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # `from gateway.service import facade` imports the submodule, not just the package.
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "gateway" or name.startswith("gateway.")}


def _room(module: str) -> str | None:
    """The room of a module; None for the top-level composition modules (daemon, cli, ...)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "gateway":
        return None
    top = parts[1]
    if top == "api" and len(parts) > 2 and parts[2] in ("grpc_native", "openai"):
        return f"api.{parts[2]}"
    if top == "service" and (len(parts) == 2 or parts[2] == "facade"):
        return "service.facade"  # the package itself exports the facade and nothing else
    return top if (GATEWAY / top).is_dir() else None


def _is_module(name: str) -> bool:
    base = GATEWAY.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or base.is_dir()


def _breaks() -> dict[tuple[str, str], str]:
    breaks = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        module = _module_name(path)
        room = _room(module)
        if room == "service.facade":
            room = "service"
        if room is None or room == "_proto" or "*" in ALLOWED[room]:
            continue
        allowed = ALLOWED[room] | {room}
        if room == "service":
            allowed = allowed | {"service.facade"}
        for target in _imports(path):
            if not _is_module(target):
                target = target.rsplit(".", 1)[0]  # `from package import name` of a class or function
            if target == "gateway":
                if room in ("monitoring", "scheduler", "service"):
                    continue  # `from gateway import native`: the one switch that picks the hot path
                breaks[(module, target)] = f"{room} imports the gateway package"
                continue
            other = _room(target)
            if other is None:
                breaks[(module, target)] = f"{room} imports the composition module {target}"
            elif other not in allowed:
                breaks[(module, target)] = f"{room} may not import {other}"
    return breaks


def test_room_rules_hold_but_for_the_known_breaks():
    breaks = _breaks()
    new = {k: v for k, v in breaks.items() if k not in KNOWN}
    assert not new, "imports against DESIGN.md's room rules:\n" + "\n".join(f"{a} -> {b}: {why}" for (a, b), why in new.items())


def test_known_breaks_are_still_there():
    """A fixed seam must leave KNOWN, so the list only shrinks."""
    breaks = _breaks()
    gone = [k for k in KNOWN if k not in breaks]
    assert not gone, f"no longer broken, remove from KNOWN: {gone}"


# What the api may not reach through the facade for: the model manager (``service.models``) and a
# version's scheduler (``loaded.scheduler``). The facade offers what the api needs of them
# (repository_index/load_model/unload_model, served_names/latest_served, scheduler_state).
_REACH_AROUND = ("models", "scheduler")


def test_the_api_reaches_nothing_around_the_facade():
    found = []
    for path in sorted((GATEWAY / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in _REACH_AROUND:
                found.append(f"{path.relative_to(GATEWAY.parent)}:{node.lineno}: .{node.attr}")
    assert not found, "the api reaches around service/facade.py:\n" + "\n".join(found)
