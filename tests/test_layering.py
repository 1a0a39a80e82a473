"""Imports point down the layers (shared/STYLE.md), and no module imports itself back.

Every import counts, those inside functions too: a lazy import is still a dependency.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fedsim": "fedsim", "server": "fedsim.server", "client": "fedsim.client",
            "fedmodels": "fedsim.fedmodels", "simulations": "fedsim.simulations",
            "privacy": "fedsim.privacy", "reports": "fedsim.reports",
            "deploy": "fedsim.deploy"}
# what each room may import of fedsim besides itself (fedsim.errors: everyone)
ALLOWED = {
    "privacy": set(),
    "fedmodels": set(),
    "client": {"fedmodels", "privacy", "fedsim.protocol", "fedsim.settings"},
    "server": {"fedmodels", "privacy", "fedsim.protocol", "fedsim.settings", "fedsim.config",
               "fedsim.options"},
    "reports": {"privacy", "fedmodels"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join([name, *parts]).removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n == "fedsim" or n.startswith("fedsim.")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else module


def _allowed(room: str, target: str) -> bool:
    if target in ("fedsim", "fedsim.errors") or target.startswith("fedsim.errors.") \
            or _room(target) == room:
        return True
    return any(target == a or target.startswith(a + ".") or _room(target) == a
               for a in ALLOWED[room])


def test_imports_point_down():
    wrong = [f"{module} imports {target}" for module, path in _modules().items()
             if _room(module) in ALLOWED
             for target in sorted(_imports(path)) if not _allowed(_room(module), target)]
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while component[-1:] != [node]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    modules = _modules()
    edges = defaultdict(set)
    for module, path in modules.items():
        edges[module] = {t for t in _imports(path) if t in modules and t != module}
    assert not _cycles(edges)


def test_the_cycle_finder_finds_one():
    assert _cycles(defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) \
        == [["a", "b", "c"]]
