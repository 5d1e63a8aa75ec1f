"""Architecture rules of the pack, checked on every run (beside "the core imports no ComfyUI" in
test_packaging_core.py):

* no import cycles between the pack's modules, counting imports inside functions too (a cycle
  hidden in a function-level import is still a cycle). A package's ``__init__`` re-exporting its
  own submodules is not counted: that is how a package names its parts;
* no private names across modules: nothing imports ``_name`` from another module of the pack or
  reaches ``module._name``. Underscore *modules* of ``nodes/`` (``_common``, ``_glue``, ``_types``,
  ``_identity``) are the node package's shared glue, imported by its own modules only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("continuity", "nodes")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom names, in the pack's namespace (nodes' ``..continuity`` is
    the sibling package), or None for modules outside the pack."""
    if node.level == 0:
        base = node.module or ""
    else:
        here = module.split(".") if _is_package(module) else module.split(".")[:-1]
        up = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        base = ".".join(up + ([node.module] if node.module else []))
    return base if base.split(".")[0] in PACKAGES else None


def _imports(module: str) -> list[tuple[str, str | None, ast.AST]]:
    """(imported module, imported name or None, node) for every import of ``module``, anywhere in it."""
    tree = ast.parse(MODULES[module].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    out.append((a.name, None, node))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if base is None:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:
                    out.append((sub, None, node))          # a submodule
                else:
                    out.append((base, a.name, node))
    return out


def _owner(name: str) -> str:
    """The module an import resolves to (a missing dotted name: its nearest existing parent)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in _imports(m):
            t = _owner(target)
            if not t or t == m:
                continue
            if _is_package(m) and t.startswith(m + "."):
                continue                                     # a package re-exporting its own parts
            g[m].add(t)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
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
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def _private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_no_private_names_across_modules(module):
    bad = []
    aliases: dict[str, str] = {}
    for target, name, node in _imports(module):
        owner = _owner(target)
        if _private(name) and owner != module:
            bad.append(f"line {node.lineno}: imports {name} from {owner}")
        if name is None and isinstance(node, ast.ImportFrom):
            for a in node.names:
                if f"{target.rpartition('.')[0]}.{a.name}" == target or target.endswith("." + a.name):
                    aliases[a.asname or a.name] = target
        private_module = [p for p in target.split(".") if _private(p)]
        if private_module and not (target.startswith("nodes.") and module.startswith("nodes")):
            bad.append(f"line {node.lineno}: imports the private module {target}")
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _private(node.attr)):
            bad.append(f"line {node.lineno}: reaches {aliases[node.value.id]}.{node.attr}")
    assert not bad, f"{module}: " + "; ".join(bad)


def test_the_rules_catch_what_they_are_for():
    """The checks themselves: a cycle and a private import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _private("_apply_character_lora") and not _private("__version__") and not _private("apply")
    g = _graph()      # the graph sees relative imports, imports into the core and function-level imports
    assert "continuity.fix" in g["nodes.fix"] and "nodes._glue" in g["nodes.fix"]
    assert "continuity.scoring.similarity" in g["continuity.character.identity"]
    assert "continuity.faces.mediapipe_backend" in g["continuity.faces.masks"]
