"""The module-level import graph of the sdekit package runs one way, and no module imports sdekit inside a function.

The graph is read from the source with ``ast``: an edge for every ``import`` at module level (not inside a function
or a class body's methods) of an sdekit module, relative or absolute.  ``from .x import name`` is an edge to
``x.name`` when that is a module, else to ``x``; a package's ``__init__`` counts only through the modules it names
itself (importing ``a.b`` is not also an edge to ``a``).  The mapped packages of pyproject.toml
(``sdekit.adapters``, ``sdekit.validation``, ``sdekit.studies``) are part of the package and of the graph.
"""

import ast
import fnmatch
import os
import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Files that may import sdekit modules inside functions: the command line loads what a command needs when it runs,
#: so that ``sdekit --help`` imports neither torch nor scipy; the package's lazy attributes load on first use.
LOCAL_IMPORTS_ALLOWED = ("sdekit/__init__.py", "sdekit/cli.py", "sdekit/losses.py", "sdekit/_commands/*")

def _packages():
    """``{package name: folder}`` for sdekit and the packages pyproject.toml maps into it."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        mapped = tomllib.load(fh)["tool"]["setuptools"].get("package-dir", {})
    out = {"sdekit": os.path.join(ROOT, "sdekit")}
    out.update({name: os.path.join(ROOT, folder) for name, folder in mapped.items() if name.startswith("sdekit.")})
    return out


def _modules():
    """``{module name: path}`` of every Python file of the package (mapped folders included)."""
    modules = {}
    for package, folder in _packages().items():
        for where, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(where, folder)
            parts = [package] + ([] if rel == "." else rel.split(os.sep))
            for f in files:
                if f.endswith(".py"):
                    name = ".".join(parts if f == "__init__.py" else parts + [f[:-3]])
                    modules.setdefault(name, os.path.join(where, f))
    return modules


def _targets(node, module, path, modules):
    """The sdekit modules an import statement names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name == "sdekit" or a.name.startswith("sdekit.")]
        out = []
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            out.append(name)
        return out
    if node.level:
        package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base != "sdekit" and not base.startswith("sdekit."):
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _scan():
    """``(graph, local)``: module-level edges ``{module: set}``, and ``[(path, line, target)]`` inside functions."""
    modules = _modules()
    graph, local = {}, []

    def visit(node, module, path, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, path, modules):
                    if in_function:
                        local.append((os.path.relpath(path, ROOT), child.lineno, target))
                    elif target != module:
                        graph[module].add(target)
            visit(child, module, path, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for module, path in modules.items():
        graph[module] = set()
        with open(path, encoding="utf-8") as fh:
            visit(ast.parse(fh.read(), path), module, path, False)
    return graph, local


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan), ignoring the edges from a package's
    ``__init__`` to its own submodules."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def edges(v):
        return [w for w in graph.get(v, ()) if w in graph and not w.startswith(v + ".")]

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                strong(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


@pytest.fixture(scope="module")
def scanned():
    return _scan()


def test_the_graph_is_read(scanned):
    graph, _ = scanned
    assert "sdekit._process" in graph["sdekit._solve"]
    assert "sdekit._sde" in graph["sdekit._process"]
    likelihood = graph["sdekit._likelihood._codec"] | graph["sdekit._likelihood._loglik"]
    assert {"sdekit._process", "sdekit._solve"} <= likelihood
    assert "sdekit.adapters" in graph


def test_no_import_cycle(scanned):
    graph, _ = scanned
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "p": {"p.x"}, "p.x": {"p"}}) == [["a", "b", "c"]]


def test_no_sdekit_import_inside_a_function(scanned):
    _, local = scanned
    sdekit_files = [(path.replace(os.sep, "/"), line, target) for path, line, target in local
                    if path.replace(os.sep, "/").startswith("sdekit/")]
    allowed = LOCAL_IMPORTS_ALLOWED
    bad = [f"{path}:{line} imports {target}" for path, line, target in sdekit_files
           if not any(fnmatch.fnmatch(path, pattern) for pattern in allowed)]
    assert not bad, "imports of sdekit modules inside functions: " + "; ".join(bad)
