"""The import structure of edge_runtime and toolchain, read from the source with `ast` (nothing imported):
every import statement counts, at module level or inside a function (a function-level import closes a
cycle as surely as a module-level one, only later).

- edge_runtime has no import cycle;
- edge_runtime never imports toolchain, nor TensorFlow except where TensorFlow *is* the interpreter
  backend the user asked for (ALLOWED_TENSORFLOW);
- no module imports another module's private name (``from x import _y``, or ``x._y`` on an imported module);
- toolchain has no import cycle either, and its packages depend on each other in one direction only
  (LAYERS): the command line on the commands, the commands on the cluster, the core, the run folder and
  the configuration, never the other way; ``ui`` (messages) is everyone's and imports nothing of toolchain.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_runtime", "toolchain")
# (module, function): TensorFlow imported because it is the backend itself (``--backend tensorflow``, the
# last resort when no TFLite package is installed) or its copy of the TFLite schema (writing metadata, a
# toolchain-side use, when ai-edge-litert's is missing).
ALLOWED_TENSORFLOW = {("edge_runtime.backends", "_load"), ("edge_runtime.metadata", "_schema")}


def modules() -> dict:
    """Module name -> source path, for every .py file of both packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


class Import:
    def __init__(self, module: str, target: str, names: tuple, func: str | None, line: int):
        self.module, self.target, self.names, self.func, self.line = module, target, names, func, line

    def __repr__(self):
        where = f"{self.module}:{self.line}" + (f" in {self.func}()" if self.func else "")
        return f"{where} -> {self.target}" + (f" ({', '.join(self.names)})" if self.names else "")


def _resolve(module: str, level: int, name: str | None) -> str:
    is_pkg = MODULES.get(module, Path()).name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str) -> list:
    """Every import in ``module`` (any depth), as Import(target module, imported names, enclosing function)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), str(MODULES[module]))
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and func is None else func
            if isinstance(child, ast.Import):
                for a in child.names:
                    found.append(Import(module, a.name, (), func, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, child.level, child.module) if child.level else child.module
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    if sub in MODULES:  # `from pkg import submodule`
                        found.append(Import(module, sub, (), func, child.lineno))
                    else:
                        found.append(Import(module, base, (a.name,), func, child.lineno))
            visit(child, f)

    visit(tree, None)
    return found


def _aliases(module: str) -> dict:
    """Local name -> project module, for every ``import x.y as z`` / ``from x import y`` of a module."""
    out = {}
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module) if node.level else node.module
            for a in node.names:
                if f"{base}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{base}.{a.name}"
    return out


def graph(pkg: str) -> dict:
    g = {m: set() for m in MODULES if m.split(".")[0] == pkg}
    for m in g:
        for imp in imports_of(m):
            if imp.target in g and imp.target != m:
                g[m].add(imp.target)
    return g


def cycles(g: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def private_uses(pkg: str) -> list:
    """``from project.x import _y`` and ``x._y`` (x an imported project module) across modules of ``pkg``."""
    out = []
    for m in MODULES:
        if m.split(".")[0] != pkg:
            continue
        for imp in imports_of(m):
            if imp.target in MODULES and imp.target != m:
                out += [f"{imp!r}" for n in imp.names if n.startswith("_") and not n.startswith("__")]
        aliases = _aliases(m)
        for node in ast.walk(ast.parse(MODULES[m].read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] != m and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return out


def test_the_graph_sees_function_level_imports():
    """The reader itself: a function-level import is an edge (choose.device imports backends inside)."""
    assert "edge_runtime.backends" in graph("edge_runtime")["edge_runtime.choose"]
    assert any(i.func == "device" and i.target == "edge_runtime.backends" for i in imports_of("edge_runtime.choose"))
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_edge_runtime_has_no_import_cycle():
    assert cycles(graph("edge_runtime")) == []


def test_edge_runtime_never_imports_toolchain_nor_tensorflow():
    bad = []
    for m in MODULES:
        if not m.startswith("edge_runtime"):
            continue
        for imp in imports_of(m):
            top = (imp.target or "").split(".")[0]
            if top == "toolchain" or (top == "tensorflow" and (m, imp.func) not in ALLOWED_TENSORFLOW):
                bad.append(imp)
    assert bad == []


def test_edge_runtime_imports_no_private_name_of_another_module():
    assert private_uses("edge_runtime") == []


def test_toolchain_has_no_import_cycle():
    assert cycles(graph("toolchain")) == []


def test_toolchain_imports_no_private_name_of_another_module():
    assert private_uses("toolchain") == []


# What each part of toolchain may import (besides edge_runtime and itself). Read top-down: a part imports
# only parts below it.
LAYERS = {
    "toolchain.cli": {"commands", "cluster", "core", "rundir", "cfg", "ui"},
    "toolchain.commands": {"cluster", "core", "rundir", "cfg", "ui"},
    "toolchain.cluster": {"core", "rundir", "cfg", "ui"},
    "toolchain.core": {"rundir", "cfg", "ui"},
    "toolchain.rundir": {"cfg", "ui"},
    "toolchain.cfg": {"ui"},
    "toolchain.ui": set(),
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_toolchain_parts_depend_in_one_direction():
    bad = []
    for m in MODULES:
        if not m.startswith("toolchain.") or _part(m) == "":
            continue
        allowed = LAYERS[f"toolchain.{_part(m)}"] | {_part(m)}
        for imp in imports_of(m):
            if (imp.target or "").startswith("toolchain.") and _part(imp.target) not in allowed:
                bad.append(imp)
    assert bad == []
    assert set(LAYERS) == {f"toolchain.{_part(m)}" for m in MODULES if m.startswith("toolchain.")}
