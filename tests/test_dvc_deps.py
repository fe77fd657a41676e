"""dvc.yaml lists, for each stage, exactly the modules of pipeline/ its code imports.

The imports are read from the code (every `import`, also inside functions, and module names
given as strings, as to importlib.util.find_spec), followed through the modules they reach.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
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


def listed_code(stage: str) -> set[str]:
    deps = DVC_YAML["stages"][stage]["deps"]
    return {dep for dep in deps if dep.startswith("pipeline/")}


@pytest.mark.parametrize("stage", STAGES)
def test_every_imported_module_is_a_dependency(stage):
    missing = imported_files(stage_module(stage)) - listed_code(stage)
    assert not missing, f"stage {stage}: deps lack {sorted(missing)}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_dependency_on_code_the_stage_does_not_import(stage):
    extra = listed_code(stage) - imported_files(stage_module(stage))
    assert not extra, f"stage {stage}: deps list {sorted(extra)}, which it does not import"


def test_no_stage_module_imports_another_stage_module():
    modules = {stage_module(stage) for stage in STAGES}
    for module in sorted(modules):
        reached = {module_file(other) for other in modules - {module}}
        imported = {REPO / path for path in imported_files(module)}
        assert not (reached & imported), f"{module} imports another stage: {reached & imported}"


def test_the_import_reader_sees_imports_inside_functions_and_module_names_in_strings():
    source = (
        "def f():\n    from pipeline.shared import figures\n"
        "import importlib.util\n"
        "SPEC = importlib.util.find_spec('pipeline.serving.onnx_classifier')\n"
        "from pipeline.shared.data import load_arrays\n"
    )
    assert named_modules(source) >= {
        "pipeline.shared.figures", "pipeline.serving.onnx_classifier", "pipeline.shared.data",
    }  # fmt: skip
