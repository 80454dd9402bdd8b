"""The import rules of docs/architecture.md, checked on the source: packages import only the ones
before them in LAYERS (never upwards), and no module imports itself round a circle (function-local
imports included, since hiding a circle inside a function does not remove it; ``if TYPE_CHECKING:``
blocks are annotations, not imports, and are skipped)."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# lowest first; a package may import its own layer and the ones before it
LAYERS = [
    {"errors", "atomic", "devices", "runtime", "config", "intervals", "__init__"},  # the base: plain modules of fiberlab/
    {"envs"},
    {"recipes"},
    {"cortex"},
    {"policies"},
    {"checkpoint"},
    {"rl"},
    {"fibration"},
    {"distill"},
    {"experiments"},
    {"sweep"},
    {"api"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every fiberlab module ``path`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import submodule"
    return {m for m in found if m == "fiberlab" or m.startswith("fiberlab.")}


def _walk_runtime(node: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:``."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for other in child.orelse:
                yield from _walk_runtime(other)
            continue
        yield from _walk_runtime(child)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / "fiberlab").rglob("*.py")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolved_imports() -> dict[str, set[str]]:
    mods = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        graph[name] = {m for m in imports_of(path, name) if m in mods and m != name}
    return graph


def test_every_package_has_a_layer():
    missing = {layer_of(m) for m in all_modules()} - set(RANK)
    assert not missing, f"add {sorted(missing)} to LAYERS here and to docs/architecture.md"


def test_no_import_points_upwards():
    upward = sorted(
        f"{src} -> {dst}"
        for src, dsts in resolved_imports().items()
        for dst in dsts
        if src != "fiberlab" and RANK[layer_of(dst)] > RANK[layer_of(src)] and dst != "fiberlab"
    )
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = resolved_imports()
    # a package's __init__ re-exporting its modules is the package's face, not a dependency of them:
    # "from fiberlab.checkpoint import X" inside the package would be, and is counted
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


def test_distill_stays_on_the_training_core():
    """Issue 14: ``fiberlab.distill`` may use envs, policies, rl and checkpoint, nothing above them,
    and not ``fibration`` either (which the layer order alone would allow)."""
    allowed = {"errors", "atomic", "devices", "runtime", "config", "intervals", "__init__", "envs", "policies", "rl", "checkpoint", "distill", "cortex", "recipes"}
    bad = sorted(f"{src} -> {dst}" for src, dsts in resolved_imports().items() if layer_of(src) == "distill"
                 for dst in dsts if layer_of(dst) not in allowed)
    assert not bad, "distill imports outside its allowed packages:\n" + "\n".join(bad)
