"""The layout holds: layers import only downwards, no import cycles, one module knows the run folder.

docs/architecture.md describes the layers; these tests keep the code to it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "splat3d"

# Lower number = lower layer. A module may import its own layer and the ones below it. shapes is a
# plugin on top of everything: nothing imports it (batch reaches it through the splat3d.evaluators hook).
LAYERS = {
    "splat3d": 0, "splat3d.errors": 0, "splat3d.io": 0,
    "splat3d.scene": 1, "splat3d.render": 2, "splat3d.distill": 3, "splat3d.run": 4, "splat3d.apps": 5,
    "splat3d.shapes": 6,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """splat3d modules a file imports anywhere (top level or inside functions), most specific first."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]  # fmt: skip
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "splat3d"}
    return found


def layer(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS and docs/architecture.md")


GRAPH = {name: imports_of(path) & set(MODULES) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_layers_import_only_downwards():
    upward = []
    for name, imported in GRAPH.items():
        own, rank = layer(name)
        for other in imported:
            their, their_rank = layer(other)
            if their_rank > rank:
                upward.append(f"{name} ({own}) imports {other} ({their})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(monkeypatch):
    monkeypatch.setitem(GRAPH, "splat3d.scene.gaussians", GRAPH["splat3d.scene.gaussians"] | {"splat3d.run.config"})
    with pytest.raises(AssertionError, match="splat3d.scene.gaussians \\(splat3d.scene\\) imports splat3d.run"):
        test_layers_import_only_downwards()
    monkeypatch.setitem(GRAPH, "splat3d.scene.ply", GRAPH["splat3d.scene.ply"] | {"splat3d.scene.export"})
    monkeypatch.setitem(GRAPH, "splat3d.scene.export", GRAPH["splat3d.scene.export"] | {"splat3d.scene.ply"})
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


# The files of a run folder: only splat3d/run/folder.py (RunFolder) names them.
RUN_FILES = {"scene.ply", "metrics.jsonl", "checkpoints", "config.yaml", "preview.png", "views.png",
             "turntable.mp4", "turntable.gif", "renders", "eval.json"}  # fmt: skip
# Folders that are not run folders but share a name or two: a prior-training folder has checkpoints/,
# the demo folder a scene.ply, and `splat3d render --video` writes turntable.mp4 into any --out.
ALLOWED = {
    PACKAGE / "run" / "folder.py": RUN_FILES,
    PACKAGE / "shapes" / "train_prior.py": {"checkpoints"},
    PACKAGE / "apps" / "demo.py": {"scene.ply"},
    ROOT / "cli" / "main.py": {"turntable.mp4"},
}


def run_file_names(path: Path) -> list[str]:
    """String constants in code (not docstrings) that name a run-folder file."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            for name in RUN_FILES - ALLOWED.get(path, set()):
                if node.value == name or node.value.endswith("/" + name) or node.value.startswith(name + "/"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_only_run_folder_names_run_files():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "cli").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "scripts").glob("*.py")]  # fmt: skip
    found = [hit for path in files for hit in run_file_names(path)]
    assert not found, "ask a RunFolder (splat3d/run/folder.py) instead:\n" + "\n".join(found)


def test_the_grep_sees_a_run_file_name(tmp_path, monkeypatch):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Mentions scene.ply in a docstring, which is fine."""\npath = out / "metrics.jsonl"\n')
    monkeypatch.setattr("test_architecture.ROOT", tmp_path)
    assert run_file_names(probe) == ["probe.py:2: 'metrics.jsonl'"]
