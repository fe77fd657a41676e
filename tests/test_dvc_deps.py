"""dvc.yaml lists, for each stage, exactly the modules of pipeline/ its code imports."""

import pytest

from . import support


def listed_code(stage: str) -> set[str]:
    deps = support.DVC_YAML["stages"][stage]["deps"]
    return {dep for dep in deps if dep.startswith("pipeline/") and dep.endswith(".py")}


def test_the_model_card_template_is_a_dependency_of_evaluate():
    from pipeline.reports import card as model_card

    template = model_card.TEMPLATE.relative_to(support.REPO).as_posix()
    assert template in support.DVC_YAML["stages"]["evaluate"]["deps"]


@pytest.mark.parametrize("stage", support.STAGES)
def test_the_deps_are_exactly_the_modules_the_stage_imports(stage):
    imported, listed = support.imported_files(support.stage_module(stage)), listed_code(stage)
    assert not imported - listed, f"stage {stage}: deps lack {sorted(imported - listed)}"
    assert not listed - imported, f"stage {stage}: deps list {sorted(listed - imported)}, unused"


def test_no_stage_module_imports_another_stage_module():
    modules = {support.stage_module(stage) for stage in support.STAGES}
    for module in sorted(modules):
        reached = {support.module_file(other) for other in modules - {module}}
        imported = {support.REPO / path for path in support.imported_files(module)}
        assert not (reached & imported), f"{module} imports another stage: {reached & imported}"


def test_the_import_reader_sees_imports_inside_functions_and_module_names_in_strings():
    source = (
        "def f():\n    from pipeline.reports import figures\n"
        "import importlib.util\n"
        "SPEC = importlib.util.find_spec('pipeline.inference.onnx_classifier')\n"
        "from pipeline.data.files import load_arrays\n"
    )
    assert support.named_modules(source) >= {
        "pipeline.reports.figures", "pipeline.inference.onnx_classifier", "pipeline.data.files",
    }  # fmt: skip
