"""The README and docs/: every relative link resolves, and measured figures live in RESULTS.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FIGURE = re.compile(r"[0-9]+(\.[0-9]+)? ?(ms|images/s|samples/s|requests/s)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [link for link in LINK.findall(text) if not re.match(r"[a-z]+:|#", link)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    missing = [link for link in relative_links(page)
               if not (page.parent / link.split("#")[0]).exists()]  # fmt: skip
    assert not missing, f"{page.name}: {missing}"


def test_the_docs_cover_each_topic_and_the_readme_links_them():
    readme = (REPO / "README.md").read_text()
    for topic in ("team", "serving", "search-and-multi-worker", "reliability", "data-sources",
                  "speed", "development", "gate"):  # fmt: skip
        assert (REPO / "docs" / f"{topic}.md").is_file(), topic
        assert f"(docs/{topic}.md)" in readme, topic
    assert len(readme.splitlines()) <= 200


def test_measured_figures_are_only_in_the_results():
    found = [f"{page.name}: {line.strip()}" for page in PAGES
             for line in page.read_text().splitlines() if FIGURE.search(line)]  # fmt: skip
    assert not found, found


# A module or file of the package as a page names it: `pipeline/serving/serve.py`,
# `pipeline/inference/`, `python -m pipeline.search.tune`, `pipeline.training.fitting`.
CODE_PATH = re.compile(r"(?<![\w/.])pipeline/[\w./-]*[\w/]")
MODULE = re.compile(r"(?<![\w/.])pipeline(?:\.\w+)+")


def named_code(page: Path) -> list[str]:
    text = page.read_text()
    return CODE_PATH.findall(text) + MODULE.findall(text)


def exists(name: str) -> bool:
    if "/" in name:
        return (REPO / name).exists()
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_module_and_path_of_the_package_a_page_names_exists(page):
    missing = sorted({name for name in named_code(page) if not exists(name)})
    assert not missing, f"{page.name} names {missing}"


def test_the_docs_path_check_finds_a_missing_module(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `python -m pipeline.nowhere` or edit pipeline/shared/config.py.\n")
    assert sorted(name for name in named_code(page) if not exists(name)) == [
        "pipeline.nowhere", "pipeline/shared/config.py",
    ]  # fmt: skip
