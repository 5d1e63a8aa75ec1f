"""The pack's packaging and architecture rules, checked on every run."""
import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _requirement_names(lines):
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def test_requirements_and_pyproject_agree():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    req = _requirement_names((REPO / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert sorted(req) == sorted(project["project"]["dependencies"])
    for r in req:
        name = re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower()
        assert name not in ("torch", "torchvision", "torchaudio"), f"{r}: ComfyUI owns torch; never pull it"
        if name == "numpy":
            assert r.strip().lower() == "numpy", "never pin numpy: it breaks other packs"
    assert "comfyui" not in project["project"]["name"].lower()
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and (REPO / comfy["Icon"]).is_file()
    assert project["project"]["urls"]["Repository"]


def test_entry_point_only_v3():
    tree = ast.parse((REPO / "__init__.py").read_text())
    names = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    funcs = {n.name for n in tree.body if isinstance(n, ast.AsyncFunctionDef)}
    assert "NODE_CLASS_MAPPINGS" not in names and "comfy_entrypoint" in funcs and "WEB_DIRECTORY" in names


COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "node_helpers", "latent_preview"}


@pytest.mark.parametrize("path", sorted((REPO / "continuity").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_core_is_free_of_comfyui(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods = [node.module or ""]
        else:
            continue
        for m in mods:
            assert m.split(".")[0] not in COMFY_MODULES, f"{path.name} imports {m}: the core must not depend on ComfyUI"


def test_no_shell_anywhere():
    """No shell and no os-level command strings in the pack: calls are found in the syntax tree."""
    for path in list((REPO / "continuity").rglob("*.py")) + list((REPO / "nodes").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "os":
                assert func.attr not in ("system", "popen", "execv", "execvp", "spawnv"), f"{path}:{node.lineno}"
            for kw in node.keywords:
                shell = kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
                assert not shell, f"{path}:{node.lineno} passes shell="


def _validate_functions():
    for path in sorted((REPO / "nodes").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("validate_inputs",
                                                                                            "VALIDATE_INPUTS"):
                yield path, node


def test_no_validate_inputs_takes_kwargs():
    """ComfyUI skips its own min/max/combo checks for EVERY input of a node whose validate_inputs takes
    **kwargs, and for each input it names: so none takes **kwargs, and the ones that name numbers or
    combos check them against their declaration (nodes/_common.validation_error)."""
    found = list(_validate_functions())
    assert found, "no validate_inputs found: the scan is broken"
    for path, fn in found:
        assert fn.args.kwarg is None, f"{path.name}:{fn.lineno} validate_inputs takes **{fn.args.kwarg.arg}"
        assert fn.args.vararg is None, f"{path.name}:{fn.lineno} validate_inputs takes *{fn.args.vararg.arg}"


TIERS = ("core", "nodes", "server", "frontend")


def test_tests_are_grouped_by_stage_and_tier():
    """tests/<stage>/test_<topic>_<tier>.py, the tier one of core (no ComfyUI), nodes (in-process),
    server (live), frontend (Chromium): a newcomer finds a stage's tests, and how heavy they are, by name."""
    tests = REPO / "tests"
    files = [p.relative_to(tests) for p in tests.rglob("test_*.py") if "support" not in p.relative_to(tests).parts]
    assert len(files) > 20, "the scan is broken"
    misplaced = [str(p) for p in files if len(p.parts) != 2 or not p.stem.endswith(TIERS)]
    assert not misplaced, f"put these in tests/<stage>/ and end the name with one of {TIERS}: {misplaced}"


def test_lint_and_types_run_before_the_tests():
    """The README's test command runs ruff (with the complexity ceiling) and mypy before pytest."""
    script = (REPO / "scripts" / "run_tests.sh").read_text()
    assert script.index('"$VENV/bin/ruff" check .') < script.index('"$VENV/bin/mypy"') < script.index("-m pytest")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "max-complexity = 15" in pyproject and '"C901"' in pyproject and 'files = ["continuity"]' in pyproject
