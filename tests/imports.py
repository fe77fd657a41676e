"""What a module of pipeline/ imports, read from its source, and the stages' modules in dvc.yaml.

The imports are read from the code (every `import`, also inside functions, and module names
given as strings, as to importlib.util.find_spec), followed through the modules they reach.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from .conftest import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = sorted(DVC_YAML["stages"])


def module_file(name: str) -> Path | None:
    """The file of a `pipeline...` module or package, or None if there is none."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def named_modules(source: str) -> set[str]:
    """`pipeline.*` modules a file imports or names in a string, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return {name for name in found if name.startswith("pipeline") and module_file(name)}


def imported_files(module: str) -> set[str]:
    """Every file a module's import loads from pipeline/: itself, its packages, what they reach."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts))]  # parent packages
        todo += named_modules(module_file(name).read_text())
    return {module_file(name).relative_to(REPO).as_posix() for name in seen}


def stage_module(stage: str) -> str:
    command = DVC_YAML["stages"][stage]["cmd"].split()
    assert command[:2] == ["python", "-m"], f"stage {stage}: cmd is not `python -m MODULE`"
    return command[2]
