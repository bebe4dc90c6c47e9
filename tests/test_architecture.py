"""The package's import graph: no cycles, compiled kernels are leaves, stages only import downwards.

Every module under ``src/tradens`` is parsed (``ast``, nothing is imported) and every
intra-package import becomes an edge: module-level and function-level imports, absolute
and relative. ``from tradens.x import y`` is an edge to ``tradens.x.y`` when that is a
module, else to ``tradens.x``. Imports inside ``if TYPE_CHECKING:`` blocks are left out
(they never run). Importing ``tradens.a.b`` also runs the package ``tradens.a``'s
``__init__``; those implicit edges are not modelled (every module would otherwise sit in
a cycle with its package's ``__init__``).

Stages, lowest first (a module may import its own stage and lower ones):

====  ====================================================================
0     ``kernels/`` (compiled backends and buffers: leaves), ``_version``
1     ``systems/``, ``hypers`` (frozen hyper values), ``parallel`` (dask task helpers; these
      two import nothing)
2     ``density/``
3     ``invariants/``
4     ``representations/``, ``io`` (serialises ``Features``)
5     ``gradients/``, ``interop/`` (GAP descriptor strings; models export GAP XML with them)
6     ``models/``
7     ``analysis/``, ``cli/``, ``testing`` (may use anything)
8     the public facade: ``tradens`` (``__init__``), ``tradens.quip``, ``tradens.calculator``
====  ====================================================================
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tradens"

STAGES = {
    "kernels": 0,
    "_version": 0,
    "systems": 1,
    "hypers": 1,
    "parallel": 1,
    "density": 2,
    "invariants": 3,
    "representations": 4,
    "io": 4,
    "gradients": 5,
    "models": 6,
    "interop": 5,
    "analysis": 7,
    "cli": 7,
    "testing": 7,
    "quip": 8,
    "calculator": 8,
}

# Violations present on main, asserted exactly: a new one fails the test, and so does a
# listed one that has gone (delete it here, so that this list shrinks to empty).
KNOWN_VIOLATIONS: set[str] = set()


def module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an ``if TYPE_CHECKING:`` block."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skipped.update(id(n) for n in ast.walk(child))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Intra-package import edges, module -> imported modules."""
    modules = module_files()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = _type_checking_nodes(tree)
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names if a.name.startswith("tradens"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source != "tradens" and not source.startswith("tradens."):
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in modules else owner(source))
        targets.discard(None)
        targets.discard(name)
        graph[name] = {t for t in targets if t is not None}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 8  # the package __init__: the public facade
    return STAGES[parts[1]]


def violations(graph: dict[str, set[str]]) -> dict[str, str]:
    """Violation key -> explanation."""
    found = {}
    for component in strongly_connected(graph):
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        found["cycle: " + ", ".join(component)] = "import cycle; edges: " + "; ".join(edges)
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if a.startswith("tradens.kernels."):
                found[f"leaf: {a} -> {b}"] = "kernels/ must import nothing from tradens"
            if stage(b) > stage(a):
                found[f"stage: {a} -> {b}"] = f"stage {stage(a)} imports stage {stage(b)}"
    return found


def test_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert len(graph) > 60
    # absolute, module level
    assert "tradens.systems.batch" in graph["tradens.representations.soap"]
    # the package facade and the CLI
    assert "tradens.representations.soap" in graph["tradens"]
    assert "tradens.cli.app" in graph["tradens.cli"]
    # every module has a stage
    for name in graph:
        stage(name)


def test_cycle_and_stage_detection_on_a_toy_graph():
    toy = {
        "tradens.systems.a": {"tradens.density.b"},
        "tradens.density.b": {"tradens.systems.a", "tradens.kernels.c"},
        "tradens.kernels.c": {"tradens.systems.a"},
        "tradens.models.d": {"tradens.models.e"},
        "tradens.models.e": set(),
    }
    found = violations(toy)
    assert set(found) == {
        "cycle: tradens.density.b, tradens.kernels.c, tradens.systems.a",
        "stage: tradens.systems.a -> tradens.density.b",
        "stage: tradens.kernels.c -> tradens.systems.a",
        "leaf: tradens.kernels.c -> tradens.systems.a",
    }


def test_import_graph_has_only_the_known_violations():
    found = violations(import_graph())
    new = {key: found[key] for key in sorted(set(found) - KNOWN_VIOLATIONS)}
    gone = sorted(KNOWN_VIOLATIONS - set(found))
    message = []
    if new:
        message.append("new import-graph violations:")
        message += [f"  {key}  ({why})" for key, why in new.items()]
    if gone:
        message.append("fixed, delete from KNOWN_VIOLATIONS:")
        message += [f"  {key}" for key in gone]
    assert not message, "\n".join(message)


# ----------------------------------------------------------------------------- function length

# A function may have at most MAX_FUNCTION_LINES lines, counted from ``def`` (or its first
# decorator) to the end of its body, docstring included (``tools/long_functions.py`` lists
# them). Longer ones are listed here with the reason they stay one function, asserted exactly:
# a new long function fails, and so does a listed one that has become short (delete it here).
MAX_FUNCTION_LINES = 100
LONG_FUNCTIONS: dict[str, str] = {
    "tradens.gradients.soap_jacobian.write_jacobian": (
        "one loop over chunks of rows whose middle stages (row products, normalisation, the "
        "slab in two layouts) hand about twenty chunk-local tensors to each other and free "
        "the large ones (del) as soon as they are used, which bounds the peak memory (a "
        "helper would keep them alive in this frame); the compiled kernel replaces those "
        "stages in one call. Pair terms and row sums are helpers (_slot_terms, _row_sums)"
    ),
}


def function_lengths(tree: ast.AST, prefix: str = "") -> dict[str, int]:
    """``{qualified name: lines}`` of every function and method in ``tree`` (nested too)."""
    out: dict[str, int] = {}
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out[name] = (child.end_lineno or child.lineno) - start + 1
            out.update(function_lengths(child, name + "."))
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``{"module.qualified.name": lines}`` of the functions in src/tradens over ``limit``."""
    found = {}
    for module, (path, _) in module_files().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, lines in function_lengths(tree).items():
            if lines > limit:
                found[f"{module}.{name}"] = lines
    return found


def test_function_lengths_on_a_toy_module():
    source = (
        "@decorator\n"
        "def f(x):\n"
        "    '''Docstring.'''\n"
        "    return x\n"
        "class A:\n"
        "    def g(self):\n"
        "        def inner():\n"
        "            pass\n"
        "        return inner\n"
    )
    lengths = function_lengths(ast.parse(source))
    assert lengths == {"f": 4, "A.g": 4, "A.g.inner": 2}


def test_long_functions_are_listed_with_a_reason():
    found = long_functions()
    assert all(reason.strip() for reason in LONG_FUNCTIONS.values())
    new = sorted(set(found) - set(LONG_FUNCTIONS))
    gone = sorted(set(LONG_FUNCTIONS) - set(found))
    message = []
    if new:
        message.append(f"functions over {MAX_FUNCTION_LINES} lines: split them into helpers")
        message += [f"  {name} ({found[name]} lines)" for name in new]
    if gone:
        message.append(f"no longer over {MAX_FUNCTION_LINES} lines, delete from LONG_FUNCTIONS:")
        message += [f"  {name}" for name in gone]
    assert not message, "\n".join(message)
