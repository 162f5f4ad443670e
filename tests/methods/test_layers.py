"""The library imports downwards only: no import cycle anywhere in the package (lazy imports included), the core
(the pipeline, the learners and what they use) never reaches the toy world or the commands, and the learners sit
below the pipeline (they get it as an argument)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
UPPER = ("dreamvideo.toy", "dreamvideo.benchmark", "dreamvideo.app", "dreamvideo.cli", "dreamvideo.commands")


def _module_files() -> dict[str, Path]:
    files = {}
    for file in (SRC / "dreamvideo").rglob("*.py"):
        parts = file.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return files


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The package's modules an import statement names, at any depth (``if TYPE_CHECKING:`` blocks skipped);
    ``from package import name`` counts as the submodule ``package.name`` where there is one."""
    found = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            }
        found |= _imports(node, modules)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = _module_files()
    return {
        module: _imports(ast.parse(file.read_text()), set(files)) - {module} for module, file in files.items()
    }


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target] if target in path else [module, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "dreamvideo.methods.registry" in graph and graph["dreamvideo.pipeline"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_core_never_imports_the_toy_world_or_the_commands():
    graph = import_graph()
    for core in ("dreamvideo.pipeline", "dreamvideo.methods", "dreamvideo.artifacts", "dreamvideo.training"):
        upward = sorted(m for m in reachable(graph, core) if m.startswith(UPPER))
        assert not upward, f"{core} reaches {upward}"
    assert "dreamvideo.pipeline" not in reachable(
        graph, "dreamvideo.methods"
    )  # learners sit below the pipeline


def test_a_fresh_interpreter_importing_the_core_loads_no_upper_module():
    code = "import sys, dreamvideo.methods, dreamvideo.artifacts; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.split()
    assert "dreamvideo.methods.dreamvideo_subject" in loaded
    assert not [m for m in loaded if m.startswith((*UPPER, "dreamvideo.pipeline"))]
