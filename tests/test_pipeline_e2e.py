"""End to end: the real `dvc repro` and `dvc exp run` in a temporary copy of this repository."""

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.data.files import sha256_file

from .support import CHROMIUM_FLAGS, client_for, environment, run, run_queue, tiny_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repo with tiny params and a local IDX mirror, after one `dvc repro`."""
    base = tmp_path_factory.mktemp("e2e")
    repo = tiny_repo(base)
    first = run(["dvc", "repro"], repo)
    assert "Running stage 'train'" in first.stdout
    (base / "first_repro.log").write_text(first.stdout + first.stderr)
    # later tests add runs and commits: which are the first repro's
    made = json.loads((repo / "models/mlflow_run.json").read_text())
    made["commit"] = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    (base / "first_run.json").write_text(json.dumps(made))
    return repo


def test_outputs_exist(repo):
    assert (repo / "data/raw/mnist.npz").is_file()
    assert json.loads((repo / "data/raw/manifest.json").read_text())["source"].startswith("local ")
    for split in ("train", "val", "test"):
        assert (repo / f"data/processed/{split}.npz").is_file()
    assert (repo / "models/model.keras").is_file() and (repo / "models/model.onnx").is_file()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert {"test_accuracy", "test_loss"} <= set(metrics)
    assert (repo / "reports/train_history.csv").read_text().startswith("iteration,train_loss")


def test_mlflow_holds_the_run_named_for_its_commit_and_its_registered_version(repo):
    client, made = client_for(repo), json.loads((repo.parent / "first_run.json").read_text())
    run_ = client.get_run(made["run_id"])
    assert run_.info.status == "FINISHED" and run_.data.tags["git_commit"] == made["commit"]
    assert run_.info.run_name == run_.data.tags["git_commit"][:7]  # named for what made it
    assert run_.data.tags["tensorflow.onednn"] == "true"  # params.yaml's train.onednn, applied
    assert "test_accuracy" in run_.data.metrics
    (version,) = client.search_model_versions(f"run_id='{run_.info.run_id}'")
    assert int(version.version) == 1


def test_the_log_of_a_full_repro_has_no_false_alarms(repo):
    log = (repo.parent / "first_repro.log").read_text()
    assert "iteration 6/6: train loss" in log and "test accuracy" in log  # the log is there
    # TensorFlow's notice that its oneDNN kernels are on (params.yaml: train.onednn) is the one
    # C++ line TF_CPP_MIN_LOG_LEVEL cannot silence: absl prints it before logging is set up.
    lines = log.splitlines()
    notices = [i for i, line in enumerate(lines) if "] oneDNN custom operations are on" in line]
    before = {i - 1 for i in notices if "before absl::InitializeLog()" in lines[i - 1]}
    log = "\n".join(line for i, line in enumerate(lines) if i not in {*notices, *before})
    for noise in ("E0000", "cuInit", "absl::InitializeLog", "\x1b[", "\r", "Traceback",
                  "Downloading artifacts"):  # fmt: skip
        assert noise not in log, f"{noise!r} in the dvc repro log:\n{log}"
    alarming = [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line]
    assert not alarming, alarming


def test_second_repro_runs_nothing(repo):
    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout


def runs_in(repo: Path) -> list:
    client = client_for(repo)
    experiment = client.get_experiment_by_name("mnist-lstm")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.heavy
def test_queued_sweep_runs_in_parallel_into_one_store(repo):
    before = runs_in(repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "first results"], repo)
    # 5e-04 is how DVC writes the value back (YAML 1.2); the stage must read it as a number
    run(["dvc", "exp", "run", "--queue", "-S", "model.num_units=4,6", "-S", "train.iterations=3",
         "-S", "train.learning_rate=5e-04"], repo)  # fmt: skip
    status = run_queue(repo, jobs=2)
    assert "Failed" not in status, status
    runs = runs_in(repo)
    new = runs[len(before) :]
    assert sorted(r.data.params["model.num_units"] for r in new) == ["4", "6"]
    assert {r.data.params["train.learning_rate"] for r in new} == {"0.0005"}
    versions = client_for(repo).search_model_versions("name='mnist-lstm'")
    assert {v.run_id for v in versions} >= {r.info.run_id for r in new}  # each registered
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in new)
    names = {r.data.tags["dvc.exp_name"] for r in new}
    assert len(names) == 2 and all(r.data.tags["git.dirty"] == "true" for r in new)
    assert {r.data.tags["dvc.baseline_rev"] for r in new} == {
        run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    }
    # the DVC side lists each experiment by the name its MLflow run carries
    table = run(["dvc", "exp", "show", "--csv"], repo).stdout.splitlines()
    for r in new:
        assert r.info.run_name == r.data.tags["dvc.exp_name"]
        assert any(r.info.run_name in row.split(",") for row in table), table
    assert not list((repo / ".dvc").rglob("mlflow.db"))


def snapshot(repo: Path) -> dict:
    """What must survive a failed run: outputs, every MLflow run's status, every version."""
    client = client_for(repo)
    return {
        "model": sha256_file(repo / "models/model.keras"),
        "metrics": (repo / "reports/metrics.json").read_text(),
        "runs": {r.info.run_id: r.info.status for r in runs_in(repo)},
        "versions": sorted(
            int(v.version) for v in client.search_model_versions("name='mnist-lstm'")
        ),
    }


@contextmanager
def edited_params(repo: Path, **changes: str) -> Iterator[None]:
    """params.yaml with `key: old` lines replaced (e.g. learning_rate="0.001 -> -1"), then back."""
    params_file = repo / "params.yaml"
    original = edited = params_file.read_text()
    for key, change in changes.items():
        old, new = change.split(" -> ")
        assert f"{key}: {old}" in edited
        edited = edited.replace(f"{key}: {old}", f"{key}: {new}")
    params_file.write_text(edited)
    try:
        yield
    finally:
        params_file.write_text(original)


def test_a_bad_param_loses_nothing(repo):
    before = snapshot(repo)
    with edited_params(repo, learning_rate="0.001 -> -1"):
        failed = run(["dvc", "repro"], repo, check=False)
    assert failed.returncode != 0
    assert "error: params.yaml: train.learning_rate = -1: Input should be greater than 0" in (
        failed.stdout + failed.stderr
    )
    run(["dvc", "checkout"], repo)
    assert snapshot(repo) == before


# SIGINT and SIGTERM to the train stage: test_reliability.py; here the harshest, under DVC
@pytest.mark.heavy
def test_interrupted_repro_loses_nothing_and_the_next_completes(repo):
    before = snapshot(repo)
    iterations = 327  # a change DVC has not run before; steps_per_execution 3
    longer = {"iterations": f"6 -> {iterations}", "log_every": "3 -> 21"}
    with edited_params(repo, **longer):
        process = subprocess.Popen(["dvc", "repro"], cwd=repo, env=environment(), text=True,
                                   start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        for line in process.stdout:
            if "iteration 21/" in line:
                os.killpg(process.pid, signal.SIGKILL)
                break
        output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output
    interrupted = [r.info.run_id for r in runs_in(repo) if r.info.run_id not in before["runs"]]
    statuses = {r.info.run_id: r.info.status for r in runs_in(repo)}
    # SIGKILL leaves nobody to close the run: the next train marks it KILLED (checked below)
    assert len(interrupted) == 1 and statuses[interrupted[0]] == "RUNNING"
    assert not list((repo / "models").glob(".model.keras*"))  # no half-written model

    run(["dvc", "checkout"], repo)  # the previous model and metrics come back
    after = snapshot(repo)
    assert after["model"] == before["model"] and after["metrics"] == before["metrics"]
    assert all(after["runs"][run_id] == status for run_id, status in before["runs"].items())
    assert set(before["versions"]) <= set(after["versions"])

    with edited_params(repo, **longer):  # the interrupted change now runs to the end
        completed = run(["dvc", "repro"], repo)
    ran = [line.split("'")[1] for line in completed.stdout.splitlines() if "Running stage" in line]
    assert ran == ["train", "evaluate"]
    assert f"iteration {iterations}/{iterations}" in completed.stdout + completed.stderr
    assert {r.info.run_id: r.info.status for r in runs_in(repo)}[interrupted[0]] == "KILLED"
    runs_before_restore = len(runs_in(repo))
    # back to the committed params: DVC restores train from its run cache, no new MLflow run
    assert "Running stage 'train'" not in run(["dvc", "repro"], repo).stdout
    assert snapshot(repo)["model"] == before["model"]
    assert len(runs_in(repo)) == runs_before_restore


def rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with no network at all."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_offline_plots_page_renders_every_chart(repo, tmp_path):
    template = tmp_path / "template.html"
    run([sys.executable, "-m", "pipeline.tools.offline_plots", str(template)], repo)
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path / "out")],
        repo)  # fmt: skip
    page = tmp_path / "out/index.html"
    assert "cdn.jsdelivr.net" not in page.read_text()
    for title in ("training curves, loss", "training curves, accuracy", "test confusion matrix"):
        assert title in page.read_text()
    assert (repo / "reports/model_card.md").read_text().count("MLflow run: `") == 1
    dom = rendered_dom(page, tmp_path / "profile")
    # vega-embed draws each chart on a canvas of class "marks"; a failed chart draws none
    charts = dom.count('class="marks"')
    vega_plots = 4  # training loss, training accuracy, F1 per class, confusion matrix
    assert charts == vega_plots, dom[:2000]
    assert "misclassified.png" in dom
