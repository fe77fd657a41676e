"""`make ui`: MLflow's UI without GenAI job workers, its link to the training runs' shared view."""

import json
import re

import pytest

from pipeline.tools import ui as ui_tool

from . import support

pytestmark = pytest.mark.slow
LINK = re.compile(
    r"http://127\.0\.0\.1:\d+/#/experiments/\d+/runs\?workflowType=machine_learning"
    r"&viewStateShareKey=pipeline-training-runs"
)


def test_make_ui_prints_the_runs_link_runs_no_genai_workers_and_leaves_nothing_behind(
    trained, tmp_path
):
    params = support.write_params(trained.params.model_dump(mode="json"), tmp_path / "params.yaml")
    log = tmp_path / "ui.log"
    with support.running("pipeline.tools.ui", ["--params", str(params)], "/health", log,
                 {"DVC_ROOT": str(trained.root)}) as server:  # fmt: skip
        experiment = trained.client().get_run(trained.run_id).info.experiment_id
        assert f"/#/experiments/{experiment}/runs?" in LINK.search(log.read_text()).group(0)
        view = trained.client().get_experiment(experiment).tags  # the view the link opens
        assert json.loads(view[ui_tool.VIEW_TAG_PREFIX + ui_tool.VIEW_KEY])["selectedColumns"]
        processes = support.descendants(server.pid)
        lines = [support.command_line(pid) for pid in processes]
        assert lines and not [line for line in lines if "huey" in line], lines  # MLflow's jobs
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
