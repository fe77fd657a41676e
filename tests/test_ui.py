"""`make ui`: MLflow's UI without GenAI job workers, its link to the training runs, in Chromium."""

from __future__ import annotations

import re

import pytest

from .support import browser, command_line, descendants, running, wait_until, write_params

pytestmark = pytest.mark.slow
LINK = re.compile(
    r"http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs\?workflowType=machine_learning"
)


@pytest.fixture(scope="module")
def ui(trained, tmp_path_factory):
    """`python -m pipeline.tools.ui` on the tiny trained store; its link, processes and run."""
    folder = tmp_path_factory.mktemp("ui")
    params = write_params(trained.params.model_dump(mode="json"), folder / "params.yaml")
    log = folder / "ui.log"
    with running("pipeline.tools.ui", ["--params", str(params)], "/health", log,
                 {"DVC_ROOT": str(trained.root)}) as server:  # fmt: skip
        link = LINK.search(log.read_text())
        assert link, log.read_text()
        processes = descendants(server.pid)
        yield {"link": link.group(0), "experiment_id": link.group(1), "url": server.url,
               "processes": processes}  # fmt: skip
    # stopped by SIGTERM (running() checks its exit): nothing it started is left behind
    left = lambda: [line for line in map(command_line, processes) if line]  # noqa: E731
    assert wait_until(lambda: not left(), timeout=20), left()


def test_the_ui_starts_no_genai_job_workers(ui):
    lines = [command_line(pid) for pid in ui["processes"]]
    assert lines and not [line for line in lines if "huey" in line], lines


def test_the_link_opens_the_training_runs_with_the_run_listed(ui, trained):
    from selenium.webdriver.support.ui import WebDriverWait

    run_name = trained.client().get_run(trained.run_id).info.run_name
    driver = browser("1400,1000")
    try:
        driver.get(ui["link"])
        WebDriverWait(driver, 90).until(lambda page: run_name in page.page_source)
    finally:
        driver.quit()


def test_the_runs_system_metrics_tab_draws_a_chart(ui, trained):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs/{trained.run_id}/system-metrics"
    driver = browser("1400,1000")
    try:
        driver.get(page)
        WebDriverWait(driver, 90).until(
            lambda page: page.find_elements(By.CSS_SELECTOR, ".js-plotly-plot svg")
        )
    finally:
        driver.quit()
