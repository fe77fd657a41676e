"""`make ui`: MLflow's UI without GenAI job workers, its link to the training runs, in Chromium."""

import json
import re

import pytest

from pipeline.tools import ui as ui_tool
from pipeline.tools.ui import HEADLINE_METRICS

from . import support

pytestmark = pytest.mark.slow
LINK = re.compile(
    r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?workflowType=machine_learning"
    r"&viewStateShareKey=pipeline-training-runs"
)


def test_no_genai_workers_and_the_link_opens_the_runs_with_the_run_and_its_accuracy(
    trained, tmp_path
):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    params = support.write_params(trained.params.model_dump(mode="json"), tmp_path / "params.yaml")
    run_name = trained.client().get_run(trained.run_id).info.run_name
    log = tmp_path / "ui.log"
    with support.running("pipeline.tools.ui", ["--params", str(params)], "/health", log,
                 {"DVC_ROOT": str(trained.root)}) as server:  # fmt: skip
        link = LINK.search(log.read_text())
        assert link, log.read_text()
        processes = support.descendants(server.pid)
        lines = [support.command_line(pid) for pid in processes]
        assert lines and not [line for line in lines if "huey" in line], lines  # MLflow's jobs
        driver = support.browser("2400,1000")  # wide: the table draws only the columns in sight
        try:
            driver.get(link.group(0))
            WebDriverWait(driver, 90).until(lambda page: run_name in page.page_source)
            headers = lambda page: {cell.text for cell in page.find_elements(  # noqa: E731
                By.CSS_SELECTOR, "[role=columnheader]")}  # fmt: skip
            rendering = (StaleElementReferenceException,)  # a header re-drawn while it is read
            WebDriverWait(driver, 30, ignored_exceptions=rendering).until(
                lambda page: set(HEADLINE_METRICS) <= headers(page)
            )
        finally:
            driver.quit()
    # stopped by SIGTERM (support.running() checks its exit): nothing it started is left behind
    left = lambda: [line for line in map(support.command_line, processes) if line]  # noqa: E731
    assert support.wait_until(lambda: not left(), timeout=20), left()


def test_the_view_shows_the_params_that_differ_then_the_headline_metrics_in_a_tag(tmp_path):
    runs = [
        {"seed": "42", "train.learning_rate": "0.001", "model.num_units": "128"},
        {"seed": "42", "train.learning_rate": "0.002", "model.num_units": "128"},
        {"seed": "42", "train.learning_rate": "0.001"},  # a param missing differs too
        {},  # a run that failed before logging its params
    ]
    assert ui_tool.varying_params(runs) == ["model.num_units", "train.learning_rate"]
    assert ui_tool.varying_params(runs[:1]) == []
    assert ui_tool.view_state(["train.learning_rate"])["selectedColumns"] == [
        "attributes.`Models`",
        "params.`train.learning_rate`",
        "metrics.`test_accuracy`",
        "metrics.`validation_accuracy`",
    ]
    client = support.client_for(tmp_path)  # this store only, never the process's default one
    experiment = client.create_experiment("runs", (tmp_path / "artifacts").as_uri())
    for rate in ("0.001", "0.002"):
        run = client.create_run(experiment)
        for key, value in {"seed": "42", "train.learning_rate": rate}.items():
            client.log_param(run.info.run_id, key, value)
    assert ui_tool.share_view(client, experiment)
    assert ui_tool.share_view(client, experiment)  # rewritten, not added
    tags = client.get_experiment(experiment).tags
    views = [key for key in tags if key.startswith(ui_tool.VIEW_TAG_PREFIX)]
    assert views == [ui_tool.VIEW_TAG_PREFIX + ui_tool.VIEW_KEY]
    columns = json.loads(tags[views[0]])["selectedColumns"]
    assert "params.`train.learning_rate`" in columns and "params.`seed`" not in columns
