"""The README and docs/: every relative link resolves, and measured figures live in RESULTS.md."""

import re
from pathlib import Path

import pytest
import yaml

from .support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FIGURE = re.compile(r"[0-9]+(\.[0-9]+)? ?(ms|images/s|samples/s|requests/s)")


def test_the_docs_cover_each_topic_and_the_readme_links_them():
    readme = (REPO / "README.md").read_text()
    for topic in ("team", "serving", "search-and-multi-worker", "reliability", "data-sources",
                  "speed", "development", "gate"):  # fmt: skip
        assert (REPO / "docs" / f"{topic}.md").is_file(), topic
        assert f"(docs/{topic}.md)" in readme, topic


def test_measured_figures_are_only_in_the_results():
    found = [f"{page.name}: {line.strip()}" for page in PAGES
             for line in page.read_text().splitlines() if FIGURE.search(line)]  # fmt: skip
    assert not found, found


# A module or file of the package as a page names it: `pipeline/serving/serve.py`,
# `pipeline/inference/`, `python -m pipeline.search.tune`, `pipeline.training.fitting`.
CODE_PATH = re.compile(r"(?<![\w/.])pipeline/[\w./-]*[\w/]")
MODULE = re.compile(r"(?<![\w/.])pipeline(?:\.\w+)+")


def exists(name: str) -> bool:
    if "/" in name:
        return (REPO / name).exists()
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


# What a page tells a user to type: the params keys (`serve.max_image_pixels`, `-S
# train.learning_rate=5e-4`, `model.*`, `evaluate:` in `params.yaml`), the make targets and the
# modules run with `python -m`. Each must exist, or the page sends the user to an error.
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
TARGETS = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
PYTHON_BLOCK = re.compile(r"```python\n.*?```", flags=re.S)  # Python's dotted names are not keys
FENCED_BLOCK = re.compile(r"```.*?```", flags=re.S)
INLINE_CODE = re.compile(r"`([^`]+)`")
# A section's name, then `.key`s, or `.*`; not a call (`mlflow.get_run(`), nor part of a path.
PARAMS_KEY = re.compile(
    rf"(?<![\w/.$-])(?:{'|'.join(map(re.escape, PARAMS))})(?:\.\w+)*\.(?:\w+|\*)(?![\w(*]|\.[\w*])"
)
SECTION = re.compile(r"`(\w+):` in\s+`params\.yaml`")
FILE_SUFFIXES = {"csv", "db", "json", "keras", "log", "md", "npz", "onnx", "png", "py", "yml"}
# Names in a section's namespace that are something else: run tags, Keras's and MLflow's API.
NOT_PARAMS = {"data.train_sha256", "model.weights_sha256", "model.unrolled", "model.fit",
              "mlflow.tensorflow.load_model", "mlflow.pyfunc.load_model"}  # fmt: skip
MAKE_TARGET = re.compile(r"(?<![\w-])make\s+([a-z][\w-]*)")
PYTHON_MODULE = re.compile(r"python -m\s+([\w.<>]+)")


def named_params(text: str) -> list[str]:
    text = PYTHON_BLOCK.sub("", text)
    keys = [key for key in PARAMS_KEY.findall(text)
            if key.rsplit(".", 1)[1] not in FILE_SUFFIXES and key not in NOT_PARAMS]  # fmt: skip
    return keys + [section + ".*" for section in SECTION.findall(text)]


def is_param(key: str) -> bool:
    """`train.learning_rate`, `model.*` (a section), `tune.space`: a key of params.yaml."""
    value = PARAMS
    for part in key.removesuffix(".*").split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return not key.endswith(".*") or isinstance(value, dict)


def named_targets(text: str) -> list[str]:
    """`make serve PORT=5011` in inline code or a code block → serve."""
    code = FENCED_BLOCK.findall(text) + INLINE_CODE.findall(FENCED_BLOCK.sub("", text))
    return [target for snippet in code for target in MAKE_TARGET.findall(snippet)]


def run_modules(text: str) -> list[str]:
    """`python -m pipeline.search.tune` → its module; this repo's only, no placeholders."""
    names = [name.rstrip(".") for name in PYTHON_MODULE.findall(text)]
    return [name for name in names
            if "<" not in name and (REPO / name.split(".")[0]).is_dir()]  # fmt: skip


def runnable(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def missing(page: Path) -> dict[str, list[str]]:
    """What a page names that does not exist, by kind; empty when all of it does."""
    text = page.read_text()
    links = [link for link in LINK.findall(FENCED_BLOCK.sub("", text))  # code holds no links
             if not re.match(r"[a-z]+:|#", link)]  # fmt: skip
    found = {
        "links": [link for link in links if not (page.parent / link.split("#")[0]).exists()],
        "package names": [name for name in CODE_PATH.findall(text) + MODULE.findall(text)
                          if not exists(name)],
        "params keys": [key for key in named_params(text) if not is_param(key)],
        "make targets": set(named_targets(text)) - TARGETS,
        "python -m modules": [name for name in run_modules(text) if not runnable(name)],
    }  # fmt: skip
    return {kind: sorted(set(names)) for kind, names in found.items() if names}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_module_params_key_and_make_target_a_page_names_exists(page):
    assert not missing(page), f"{page.name} names what does not exist: {missing(page)}"


def test_the_checks_find_a_wrong_link_key_target_module_and_path(tmp_path):
    assert not [name for name in NOT_PARAMS if is_param(name)]
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python -m pipeline.nowhere` or edit pipeline/shared/config.py, see [x](none.md).\n"
        "Set `serve.max_pixels` or `dvc exp run -S train.rate=0.1`, and `report.output_dir`;\n"
        "`mlflow.db`, `mlflow.get_run(id)`; `nowhere:` in `params.yaml`.\n"
        "```bash\nmake serve PORT=5011\nmake deploy\n```\n"
        "Run `make\nui`, then `.venv/bin/python -m pipeline.search.tune` or `python -m pytest`.\n"
    )
    assert missing(page) == {
        "links": ["none.md"],
        "package names": ["pipeline.nowhere", "pipeline/shared/config.py"],
        "params keys": ["nowhere.*", "serve.max_pixels", "train.rate"],
        "make targets": ["deploy"],
        "python -m modules": ["pipeline.nowhere"],
    }
