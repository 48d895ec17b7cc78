"""The package's layers (docs/architecture.md): no import cycle between modules or between the top-level units,
every import pointing down the layers, and no library module that prints.

Oracle: the import statements themselves, read with `ast` from every module of emorl_cli (imports inside
functions and under TYPE_CHECKING count too: they are dependencies all the same).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "emorl_cli"
ROOT = "emorl_cli"  # the package's own __init__ (the version): anything may import it

# top-level unit → layer; a unit may import units of a lower layer (a larger number), and units of its own
# layer only where SAME_LAYER says so
LAYERS = {
    "cli": 0,
    "__main__": 0,
    # workflows: compose the layers below
    "demo": 1,
    "bench": 1,
    "tune_geco": 1,
    "experiments": 1,
    "gpu_check": 1,
    "pictures": 1,
    "segment": 1,
    "api": 1,
    # engines
    "training": 2,
    "evaluate": 2,
    "viz": 2,
    # parts
    "model": 3,
    "data": 3,
    "checkpoint": 3,
    "geco": 3,
    "published": 3,
    # foundation
    "config": 4,
    "original_config": 4,
    "errors": 4,
    "files": 4,
    "json_input": 4,
    "locks": 4,
    "accelerator": 4,
    ROOT: 5,
}
SAME_LAYER = {
    ("__main__", "cli"),  # `python -m emorl_cli` runs the CLI
    ("experiments", "demo"),  # a sweep's runs are demo-style runs
    ("gpu_check", "bench"),  # the GPU check times steps as bench does
    ("demo", "pictures"),  # the demo ends with viz and gifs
    ("training", "evaluate"),  # evaluation during training
    ("training", "viz"),  # the TensorBoard figure
    ("checkpoint", "model"),  # a checkpoint builds its model
    ("geco", "model"),  # GECO's state becomes a model Objective
    ("published", "data"),  # published checkpoints download like data
    ("config", "errors"),
    ("files", "errors"),
    ("locks", "errors"),
    ("locks", "files"),
    ("locks", "json_input"),
    ("json_input", "errors"),
    ("original_config", "json_input"),
    ("original_config", "config"),
    ("original_config", "errors"),
}
# the package's public API: `emorl_cli.load` imports `emorl_cli.api` inside the function, on first use, so
# `import emorl_cli` (which every module may do, for the version) loads nothing of the layers above
PUBLIC_API = {"emorl_cli.api"}
# units whose job is narrower than their layer: viz draws arrays, model is nn.Modules over config
ONLY = {"viz": {"errors", "files", ROOT}, "model": {"config", "errors", ROOT}}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported emorl_cli module, dotted
    where: str  # file:line


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def known_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[Import]:
    """The emorl_cli modules `path` imports; `from a import b` counts as a.b where b is a module."""
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == ROOT or name.startswith(ROOT + "."):
                while name not in modules:  # `import emorl_cli.x.y` of a name inside x.y
                    name = name.rpartition(".")[0]
                found.append(Import(source, name, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"))
    return found


def all_imports() -> list[Import]:
    """Every import between emorl_cli modules, but the package root's lazy import of its public API (held
    by `test_the_package_root_loads_its_public_api_only_when_called`)."""
    modules = known_modules()
    found = [imp for path in modules.values() for imp in imports_of(path, modules)]
    return [imp for imp in found if not (imp.source == ROOT and imp.target in PUBLIC_API)]


def test_the_package_root_loads_its_public_api_only_when_called():
    """`emorl_cli/__init__.py` imports no emorl_cli module at import time, and inside functions only the API."""
    path = PACKAGE / "__init__.py"
    tree = ast.parse(path.read_text())
    at_import = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and "emorl_cli" in ast.dump(n)]
    assert not at_import, "emorl_cli/__init__.py imports emorl_cli modules when the package is imported"
    inside = {imp.target for imp in imports_of(path, known_modules())}
    assert inside <= PUBLIC_API, f"emorl_cli/__init__.py imports {sorted(inside - PUBLIC_API)}; only {PUBLIC_API}"
    assert inside, "emorl_cli.load should import emorl_cli.api"


def unit(module: str) -> str:
    """The top-level unit of a module: emorl_cli.evaluate.ari → evaluate; emorl_cli → emorl_cli."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as [a, b, …, a], or None (depth-first search, sorted for stable output)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _describe(cycle: list[str], imports: list[Import], key) -> str:
    steps = []
    for a, b in zip(cycle[:-1], cycle[1:], strict=True):
        where = next(i.where for i in imports if key(i.source) == a and key(i.target) == b)
        steps.append(f"{a} -> {b} ({where})")
    return "; ".join(steps)


def test_find_cycle_finds_one_and_only_where_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_imports_are_read_from_every_module():
    imports = all_imports()
    pairs = {(i.source, i.target) for i in imports}
    assert ("emorl_cli.cli.app", "emorl_cli.cli.eval_cmd") in pairs  # a `from package import module`
    assert ("emorl_cli.training.loop", "emorl_cli.training.step") in pairs
    assert ("emorl_cli.cli.eval_cmd", "emorl_cli.evaluate.dci_report") in pairs  # inside a function
    assert set(LAYERS) >= {unit(m) for m in known_modules()}, "a new top-level unit needs a layer in LAYERS"


def test_no_import_cycle_between_modules():
    imports = all_imports()
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.source != imp.target:
            graph.setdefault(imp.source, set()).add(imp.target)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between modules: " + _describe(cycle, imports, lambda m: m)


def test_no_import_cycle_between_top_level_units():
    imports = all_imports()
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if unit(imp.source) != unit(imp.target):
            graph.setdefault(unit(imp.source), set()).add(unit(imp.target))
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between units: " + _describe(cycle, imports, unit)


@pytest.mark.parametrize("kind", ["down the layers", "narrow units"])
def test_every_import_follows_the_layers(kind):
    wrong = []
    for imp in all_imports():
        a, b = unit(imp.source), unit(imp.target)
        if a == b:
            continue
        if kind == "down the layers":
            ok = LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) in SAME_LAYER)
        else:
            ok = a not in ONLY or b in ONLY[a]
        if not ok:
            wrong.append(f"{a} -> {b} ({imp.where})")
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(sorted(set(wrong)))


def test_no_library_module_prints():
    """Outside cli/ nothing prints: no print(), no rich, no writes to sys.stdout/sys.stderr."""
    found = []
    for name, path in known_modules().items():
        if unit(name) in ("cli", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"print() at {where}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n == "rich" or n.startswith("rich.") for n in names):
                    found.append(f"rich imported at {where}")
            elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr"):
                if isinstance(node.value, ast.Name) and node.value.id == "sys":
                    found.append(f"sys.{node.attr} at {where}")
    assert not found, "library code that prints (report through a sink or the 'emorl' logger):\n" + "\n".join(found)
