"""The package's modules import each other without a cycle, read from the source (`ast`), so
that an import that only happens inside a function counts too."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "wlsft_jax"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, root: pathlib.Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, each with the packages above it (which Python runs
    first, unless they hold `path`: those are running already); `from package import name`
    counts `package.name` when that is a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    imported = set()
    for name in names:
        parts = name.split(".")
        imported.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    own = module_name(path, root).split(".")
    running = {".".join(own[:i]) for i in range(1, len(own) + 1)}
    return (imported & modules) - running


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    return {module_name(path, root): imported_modules(path, root, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state = {}  # module -> "open" while on the path, "done" once explored.

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other, path + [other])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_no_module_of_the_package_imports_itself_around_a_circle():
    graph = import_graph()
    assert "wlsft_jax.experiment" in graph and graph["wlsft_jax.experiment"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_circle_through_an_import_inside_a_function_is_found(tmp_path):
    package = tmp_path / "wlsft_jax"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from wlsft_jax import b\n")
    (package / "b.py").write_text("def f():\n    from wlsft_jax.c import g\n")
    (package / "c.py").write_text("import wlsft_jax.a\n")
    assert find_cycle(import_graph(package)) == [
        "wlsft_jax.a", "wlsft_jax.b", "wlsft_jax.c", "wlsft_jax.a"]
