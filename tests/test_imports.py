"""The package's import graph: no cycles (function-local imports count: hiding an import inside a
function does not remove the cycle), no function-local import of a package module at all (only
optional packages, such as detectron2, are imported where they are used), and the leaf modules stay
leaves. The CLI's lazy imports go through one facade, leoclr_cli/lazy.py, whose ``if TYPE_CHECKING:``
imports are its table: they count here as ordinary imports, so its edges are in the graph and the cycle
check (docs/architecture.md, "A CLI that answers at once")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "leoclr_cli"


def module_files() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def package_imports(mod: str, is_init: bool, tree: ast.AST, mods: dict[str, Path]) -> list[tuple[ast.AST, set[str]]]:
    """Every import statement of module ``mod`` with the package modules it names (``from . import x``
    counts as x); a package's imports of its own submodules are left out."""
    package = mod if is_init else mod.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        hits = {n for n in names if n in mods and n != mod and not (is_init and n.startswith(mod + "."))}
        if hits:
            found.append((node, hits))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (``from . import x`` counts as x)."""
    mods = module_files()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for _, hits in package_imports(mod, path.name == "__init__.py", ast.parse(path.read_text()), mods):
            graph[mod] |= hits
    return graph


def local_imports(mod: str, is_init: bool, tree: ast.AST, mods: dict[str, Path]) -> list[str]:
    """``mod:line`` of every import of a package module inside a function (or a class body)."""
    top = {id(node) for node in ast.iter_child_nodes(tree)}
    top |= {id(n) for node in ast.iter_child_nodes(tree) if isinstance(node, (ast.If, ast.Try))
            for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}  # `if TYPE_CHECKING:`, try/except
    return [f"{mod}:{node.lineno}" for node, _ in package_imports(mod, is_init, tree, mods) if id(node) not in top]


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a list of modules (empty when there is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_hidden_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_package_module_is_imported_inside_a_function():
    mods = module_files()
    found = [hit for mod, path in sorted(mods.items())
             for hit in local_imports(mod, path.name == "__init__.py", ast.parse(path.read_text()), mods)]
    assert not found, "function-local imports of package modules: " + ", ".join(found)


def test_the_local_import_finder_finds_one_and_spares_optional_packages():
    mods = {"pkg": Path("pkg/__init__.py"), "pkg.a": Path("pkg/a.py"), "pkg.b": Path("pkg/b.py")}
    source = ("from typing import TYPE_CHECKING\nfrom . import a\nif TYPE_CHECKING:\n    from .a import X\n"
              "def f():\n    import detectron2\n    from .a import Y\n    return Y\n"
              "class C:\n    def g(self):\n        from pkg import a\n")
    assert local_imports("pkg.b", False, ast.parse(source), mods) == ["pkg.b:7", "pkg.b:11"]


def bound_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (``if``/``try`` blocks included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def test_every_package_import_names_a_module_or_a_name_that_exists():
    """A stale path (a module that moved) fails here even where an installed copy of the package
    would still answer the import."""
    mods = module_files()
    trees = {mod: ast.parse(path.read_text()) for mod, path in mods.items()}
    bound = {mod: bound_names(tree) for mod, tree in trees.items()}
    stale = []
    for mod, tree in sorted(trees.items()):
        package = mod if mods[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("leoclr_cli")):
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            missing = [a.name for a in node.names if f"{target}.{a.name}" not in mods
                       and (target not in mods or a.name not in bound[target])]
            if missing:
                stale.append(f"{mod}:{node.lineno} {target}: {', '.join(missing)}")
    assert not stale, stale


def test_leaf_modules_import_nothing_of_the_package_but_errors():
    graph = import_graph()
    for leaf in ("leoclr_cli.core.atomic", "leoclr_cli.errors"):
        assert graph[leaf] <= {"leoclr_cli.errors"}, (leaf, graph[leaf])
    assert graph["leoclr_cli.data.ops"] <= {"leoclr_cli.config"}


def command_lengths(path: Path) -> dict[str, int]:
    """Lines of each function in ``path`` decorated as a Typer command (decorator and signature included)."""
    tree = ast.parse(path.read_text())
    return {f.name: f.end_lineno - min([f.lineno] + [d.lineno for d in f.decorator_list]) + 1
            for f in tree.body if isinstance(f, ast.FunctionDef)
            and any("command" in ast.unparse(d) for d in f.decorator_list)}


def test_the_cli_stays_thin():
    path = PACKAGE / "cli.py"
    lengths = command_lengths(path)
    assert len(lengths) >= 15, sorted(lengths)  # every command was found
    assert max(lengths.values()) <= 30, {k: v for k, v in lengths.items() if v > 30}
    # 450: the protocols commands and --json came in; the runners' work stays out of cli.py (commands <= 30 lines)
    assert len(path.read_text().splitlines()) <= 450


def test_command_lengths_counts_decorator_and_body(tmp_path):
    src = tmp_path / "c.py"
    src.write_text("@app.command(epilog='x')\ndef a(\n    x: int,\n) -> None:\n    pass\n\n\ndef helper():\n    pass\n")
    assert command_lengths(src) == {"a": 5}


def test_the_cli_imports_light_modules_only_and_reaches_the_runners_through_lazy():
    graph = import_graph()
    light = {"leoclr_cli.options", "leoclr_cli.lazy", "leoclr_cli.console", "leoclr_cli.errors",
             "leoclr_cli.core.progress", "leoclr_cli.core.atomic", "leoclr_cli", "leoclr_cli.core"}  # the two packages import nothing
    assert graph["leoclr_cli.cli"] <= light, graph["leoclr_cli.cli"] - light
    assert graph["leoclr_cli.options"] <= light, graph["leoclr_cli.options"] - light
    assert {"leoclr_cli.workflows.pretrain", "leoclr_cli.config", "leoclr_cli.core.rundir"} <= graph["leoclr_cli.lazy"]
