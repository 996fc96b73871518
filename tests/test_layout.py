"""The core's import graph: packages in pipeline order, no cycles, plugins on the public API only.

Imports are read from the source (every ``import`` statement, function-local ones included; those
under ``if TYPE_CHECKING:`` are type hints, not imports, and are left out), so a cycle that only
closes at run time, inside a function, is caught too.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
#: The pipeline, lowest first: a package may import its own modules and those of packages before it.
LAYERS = ["common", "plugin", "maths", "recipe", "models", "plan", "run", "extract", "testkit", "cli"]
#: What plugins may import: the public API.
PUBLIC = {"mergehub", "mergehub.executing", "mergehub.maths", "mergehub.testing"}
PLUGIN_ROOTS = [ROOT / "plugins", ROOT / "examples" / "plugins"]


def module_name(path: Path, root: Path = CORE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (CORE / "mergehub").rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported(path: Path, known: set[str] | None = None) -> set[str]:
    """The mergehub modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= (subs & known if known else set()) or {node.module}
    return {name for name in found if name == "mergehub" or name.startswith("mergehub.")}


def graph() -> dict[str, set[str]]:
    modules = core_modules()
    known = set(modules)
    return {name: imported(path, known) & known - {name} for name, path in modules.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_has_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles in the core: " + "; ".join(" <-> ".join(group) for group in found)


def test_imports_run_down_the_pipeline() -> None:
    wrong = []
    for module, targets in graph().items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if here is not None and there is not None and there > here:
                wrong.append(f"{module} imports {target} ({LAYERS[there]} is above {LAYERS[here]})")
            if here is not None and target == "mergehub":
                wrong.append(f"{module} imports the public API module; internal code imports from the home module")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_top_level_holds_only_the_public_api_and_the_entry_point() -> None:
    top = sorted(p.name for p in (CORE / "mergehub").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "executing.py", "testing.py"]
    packages = sorted(p.name for p in (CORE / "mergehub").iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(LAYERS)
    for package in packages:
        doc = ast.get_docstring(ast.parse((CORE / "mergehub" / package / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"mergehub.{package} needs a docstring saying what it owns"


def plugin_files() -> list[Path]:
    return sorted(p for root in PLUGIN_ROOTS for p in root.rglob("*.py") if "build" not in p.parts)


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path: Path) -> None:
    private = sorted(imported(path) - PUBLIC)
    assert not private, f"{path.relative_to(ROOT)} imports internal modules {private}: use mergehub, mergehub.maths or mergehub.testing"


@pytest.mark.parametrize("path", sorted(p for root in PLUGIN_ROOTS for p in root.rglob("parameters.schema.json")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_schemas_name_only_public_or_own_code(path: Path) -> None:
    extension = json.loads(path.read_text())["x-mergehub"]
    own = path.parent.name
    for key in ("blocks", "check"):
        target = extension.get(key, "")
        if ":" in target:
            module = target.partition(":")[0]
            assert module in PUBLIC or module.split(".")[0] == own, f"{path}: {key} names internal {module}"


def test_the_public_api_names_resolve() -> None:
    import mergehub
    import mergehub.executing
    import mergehub.maths
    import mergehub.testing

    for module in (mergehub, mergehub.executing, mergehub.maths, mergehub.testing):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
