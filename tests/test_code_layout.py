"""The shape the code keeps: no import cycle (imports inside functions count), small modules, no private imports.

Read from the source with ``ast``, so a regression fails here the moment it is written.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aaq"
MAX_LINES = 400
# Packages in the order imports may flow: a package may import those after it, never those before.
LAYERS = ["cli", "pipeline", "spec", "algorithms", "accuracy", "tuning", "engine", "quantization", "statistics"]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """``(module, imported name, inside a function)`` for every import of aaq in ``path``."""
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "aaq":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in known else node.module, alias.name, id(node) in inner))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", id(node) in inner) for a in node.names if a.name.split(".")[0] == "aaq"]
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _, _ in imports(path, known) if m in known and m != name}
            for name, path in known.items()}


def test_no_import_cycle_between_modules() -> None:
    edges, state, cycles = graph(), {}, []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for other in sorted(edges[module]):
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other, stack + [other])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_packages_import_only_downward() -> None:
    def layer(module: str) -> int | None:
        parts = module.split(".")
        return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None

    upward = [(a, b) for a, targets in graph().items() for b in targets
              if layer(a) is not None and layer(b) is not None and layer(b) < layer(a)]
    assert upward == []


def test_no_module_is_over_the_limit() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_is_imported_from_another_package() -> None:
    known = modules()
    private = []
    for name, path in known.items():
        home = name.split(".")[:2]
        for module, imported, _ in imports(path, known):
            hidden = imported.startswith("_") and not imported.startswith("__")
            hidden = hidden or any(p.startswith("_") and not p.startswith("__") for p in module.split("."))
            if hidden and module.split(".")[:2] != home:
                private.append((name, module, imported))
    assert private == []
