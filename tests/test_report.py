"""`make report` in a real git + DVC repo with reproduced commits and their MLflow runs."""

import contextlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib import image

from pipeline.params import tools
from pipeline.tools import report

from .support import REPO, client_for, environment, run, tiny_repo, with_value, write_params

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def set_param(repo: Path, key: str, value: object) -> None:
    path = repo / "params.yaml"
    write_params(with_value(yaml.safe_load(path.read_text()), key, value), path)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Commits: tiny params never reproduced, reproduced (6 iterations), 9 reproduced."""
    repo = tiny_repo(tmp_path_factory.mktemp("report"))
    run(["dvc", "repro"], repo)
    commit(repo, "6 iterations, reproduced")
    set_param(repo, "train.iterations", 9)
    run(["dvc", "repro"], repo)
    commit(repo, "9 iterations, reproduced")
    return repo


def make_report(repo: Path, base: str, target: str, monkeypatch) -> str:
    """The report as `make report` writes it, made in this process (no interpreter start-up)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tools.load_params(repo / "params.yaml")
    return report.run(params, repo / "params.yaml", base, target).read_text()


def row(markdown: str, cell: str) -> list[str]:
    """The cells of the first table row with a cell `cell` (DVC's tables pad theirs)."""
    for line in markdown.splitlines():
        cells = [part.strip() for part in line.strip().strip("|").split("|")]
        if line.startswith("|") and cell in cells:
            return cells
    raise AssertionError(f"no row with {cell!r} in:\n{markdown}")


def side_line(markdown: str, role: str) -> str:
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"{role}: ")]
    return line


def recorded(repo: Path, revision: str, path: str) -> str:
    return run(["git", "show", f"{revision}:{path}"], repo).stdout


def cache_object(repo: Path, revision: str, path: str) -> Path:
    """The DVC cache file of an output as `revision`'s dvc.lock records it."""
    lock = yaml.safe_load(recorded(repo, revision, "dvc.lock"))
    (md5,) = {out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
              if out["path"] == path}  # fmt: skip
    return repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def run_id_of(repo: Path, revision: str) -> str:
    return json.loads(cache_object(repo, revision, "models/mlflow_run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def reviewed(repo, tmp_path_factory) -> tuple[str, Path]:
    """HEAD~1 against HEAD, HEAD~1's run without a gate verdict: the Markdown, its folder."""
    client, base = client_for(repo), run_id_of(repo, "HEAD~1")
    for tag in set(report.VERDICT_TAGS) & set(client.get_run(base).data.tags):
        client.delete_tag(base, tag)
    with pytest.MonkeyPatch.context() as monkeypatch:
        markdown = make_report(repo, "HEAD~1", "HEAD", monkeypatch)
    folder = shutil.copytree(repo / "build/report", tmp_path_factory.mktemp("reviewed") / "r")
    return markdown, folder


@pytest.mark.heavy
def test_dvcs_diffs_the_figures_and_both_runs_with_their_verdicts(repo, reviewed):
    markdown, folder = reviewed
    assert row(markdown, "train.iterations")[2:] == ["6", "9"]
    assert "train.learning_rate" not in markdown  # only what differs
    assert row(markdown, "Metric")[2:4] == ["HEAD~1", "HEAD"]
    assert "test_accuracy" in markdown.split("## Metrics")[1].split("##")[0]
    names = IMAGE.findall(markdown)
    assert {"curves.png", "confusion_change.png"} <= set(names)
    for name in names:
        pixels = image.imread(folder / name)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100, name
    client = client_for(repo)
    for revision, role in (("HEAD~1", "Base"), ("HEAD", "Target")):
        found = client.get_run(run_id_of(repo, revision))
        line = side_line(markdown, role)
        assert f"; MLflow run [{found.info.run_name}](http://127.0.0.1:5000/#/experiments/" in line
        assert f"/runs/{found.info.run_id}) `{found.info.run_id}`; made on " in line
    tags = client.get_run(run_id_of(repo, "HEAD")).data.tags  # as evaluate's gate set them
    assert side_line(markdown, "Base").endswith("; gate: no verdict recorded.")
    assert f"; gate: {tags['validation.status']}" in side_line(markdown, "Target")


@pytest.mark.heavy
def test_base_equal_to_target_says_there_is_no_change(repo, monkeypatch):
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    markdown = make_report(repo, "HEAD", head, monkeypatch)
    assert "there is no change" in markdown and "## Params" not in markdown


@pytest.mark.heavy
@pytest.mark.parametrize(
    "args", [["--base", "HEAD", "--target", "no-such-rev"], ["--base", "no-such-rev"]]
)
def test_an_unknown_revision_or_experiment_is_one_line_and_exit_1(repo, args):
    command = [sys.executable, "-m", "pipeline.tools.report", "--params", str(repo / "params.yaml")]
    result = run([*command, *args], REPO, False, environment())  # as `make report` runs it
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown revision or experiment: no-such-rev"
    ]


@contextlib.contextmanager
def unfindable(repo: Path, revision: str):
    """The revision's run tagged with other params meanwhile, as if this store lacked it."""
    client, run_id = client_for(repo), run_id_of(repo, revision)
    digest = client.get_run(run_id).data.tags["params_sha256"]
    client.set_tag(run_id, "params_sha256", "made elsewhere")
    try:
        yield
    finally:
        client.set_tag(run_id, "params_sha256", digest)


@pytest.mark.heavy
def test_a_commit_never_reproduced_has_the_run_of_its_commit(repo, monkeypatch):
    """HEAD~2 records no outputs; HEAD~1 recorded the run trained at HEAD~2 with its params."""
    markdown = make_report(repo, "HEAD~2", "HEAD", monkeypatch)
    line = side_line(markdown, "Base")
    assert line.startswith("Base: `HEAD~2` (`") and "), the committed record; MLflow run [" in line
    assert f"`{run_id_of(repo, 'HEAD~1')}` (a run of its commit at its params in this " in line
    with unfindable(repo, "HEAD~1"):
        markdown = make_report(repo, "HEAD~2", "HEAD", monkeypatch)
    assert side_line(markdown, "Base").endswith("the committed record; no MLflow run at hand.")
    (missing,) = [line for line in markdown.splitlines() if line.startswith("- base")]
    assert (
        "reports/per_class.csv: " in missing and "models/mlflow_run.json is not at hand" in missing
    )


@contextlib.contextmanager
def hidden_from_the_cache(repo: Path, revision: str, path: str, aside: Path):
    """The revision's cached copy of `path` moved aside meanwhile, as if never pulled."""
    cached = cache_object(repo, revision, path)
    shutil.move(cached, aside / "object")
    try:
        yield
    finally:
        shutil.move(aside / "object", cached)


@pytest.mark.heavy
def test_a_run_record_and_history_missing_from_the_cache_come_from_the_run_found_by_its_params(
    repo, monkeypatch, tmp_path
):
    """As in a fresh clone: main's dvc.lock names run records another machine made."""
    (tmp_path / "record").mkdir()
    (tmp_path / "history").mkdir()
    with (
        hidden_from_the_cache(repo, "HEAD~1", "models/mlflow_run.json", tmp_path / "record"),
        hidden_from_the_cache(repo, "HEAD~1", "reports/train_history.csv", tmp_path / "history"),
    ):
        markdown = make_report(repo, "HEAD~1", "HEAD", monkeypatch)
    line = side_line(markdown, "Base")
    assert f"`{run_id_of(repo, 'HEAD~1')}` (its own, found by its params and metrics)" in line
    assert not [line for line in markdown.splitlines() if line.startswith("- base")]
    curves = "The base's curves are its MLflow run's metric history (reports/train_history.csv"
    assert f"{curves} is not at hand)." in markdown and "(curves.png)" in markdown


@pytest.mark.heavy
def test_a_workspace_whose_params_were_not_reproduced_says_so(repo, monkeypatch):
    original = (repo / "params.yaml").read_text()
    set_param(repo, "train.iterations", 3)
    try:
        markdown = make_report(repo, "HEAD", "workspace", monkeypatch)
    finally:
        (repo / "params.yaml").write_text(original)
    assert row(markdown, "train.iterations")[2:] == ["9", "3"]
    (line,) = [line for line in markdown.splitlines() if line.startswith("- target workspace")]
    assert "`dvc status` finds train, evaluate changed since dvc.lock ran" in line


@pytest.fixture(scope="module")
def experiment(repo) -> str:
    """An experiment of HEAD at `train.iterations: 3`, saved without training."""
    original = (repo / "params.yaml").read_text()
    set_param(repo, "train.iterations", 3)
    try:
        run(["dvc", "exp", "save", "-n", "short"], repo)
    finally:
        (repo / "params.yaml").write_text(original)
    return "short"


@pytest.mark.heavy
def test_an_experiment_by_name_and_best_by_the_selection_metric(repo, experiment, monkeypatch):
    markdown = make_report(repo, "HEAD", experiment, monkeypatch)
    assert markdown.startswith("# Review: experiment `short` (`")
    assert row(markdown, "train.iterations")[2:] == ["9", "3"]
    metric = tools.load_params(repo / "params.yaml").tune.metric  # what make tune chooses by
    best = make_report(repo, "HEAD", "best", monkeypatch)
    assert best.startswith("# Review: experiment `short`")
    assert f"- `best`: experiment `short`, {metric} " in best
    original = (repo / "params.yaml").read_text()
    set_param(repo, "tune.metric", "no_such_metric")
    try:
        with pytest.raises(report.ReportError, match="no experiment of HEAD records "
                           "no_such_metric .*; experiments considered: short"):  # fmt: skip
            make_report(repo, "HEAD", "best", monkeypatch)
    finally:
        (repo / "params.yaml").write_text(original)


# --- what the report adds, from in-memory sides (quick) ------------------------------------


def scores(f1: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"class": ["0", "1", "2"], "precision": f1, "recall": f1, "f1": f1})


def test_per_class_changes_put_the_largest_move_first_and_keep_a_side_that_lacks_a_class():
    changes = report.per_class_changes(scores([0.5, 0.9, 0.7]), scores([0.6, 0.2, 0.7]))
    assert changes["class"].tolist() == ["1", "0", "2"]
    assert changes["f1_change"].round(3).tolist() == [-0.7, 0.1, 0.0]
    alone = report.per_class_changes(None, scores([0.5, 0.9, 0.7]))
    assert alone["f1_target"].tolist() == [0.5, 0.9, 0.7] and alone["f1_base"].isna().all()
    target = report.Side("target", "workspace", per_class=scores([0.5, 0.9, 0.7]))
    markdown = report.markdown(report.Side("base", "`main`"), target, ("", ""), [], curves=False)
    assert row(markdown, "`1`")[1:4] == ["—", "0.9000", "—"]


def counts(matrix: list[list[int]]) -> pd.DataFrame:
    """A confusion matrix of classes 0, 1, 2: actual classes as rows."""
    return pd.DataFrame(matrix, index=["0", "1", "2"], columns=["0", "1", "2"])


def test_the_side_lines_name_the_record_its_run_cpu_and_verdict():
    run = report.Run("abc123", "3b750bd", "http://ui/#/runs/abc123", "passed", "Xeon (family 6)")
    base = report.Side("base", "`main` (`3b750bd`)", run=run)
    target = report.Side("target", "workspace", source="its files on disk",
                         run=report.Run("def456", "3b750bd x", cpu="EPYC"))  # fmt: skip
    markdown = report.markdown(base, target, ("", ""), [], curves=False)
    assert markdown.splitlines()[2] == (
        "Base: `main` (`3b750bd`), the committed record; MLflow run "
        "[3b750bd](http://ui/#/runs/abc123) `abc123`; made on Xeon (family 6); gate: passed."
    )
    assert "- the sides trained on different CPU kinds (Xeon (family 6); EPYC)" in markdown


def test_the_confusion_change_shows_a_mistake_that_moved_off_the_diagonal(tmp_path):
    base = report.Side("base", "`main`", confusion=counts([[5, 0, 0], [1, 4, 0], [0, 0, 5]]))
    target = report.Side("target", "workspace", confusion=counts([[5, 0, 0], [3, 2, 0], [0, 0, 5]]))
    figure = report.confusion_change(base, target, ["0", "1", "2"])
    cells = figure.axes[0].images[0].get_array()
    assert cells.mask.tolist() == np.eye(3, dtype=bool).tolist()  # the diagonal set apart, grey
    assert cells[1, 0] == 2 and cells.sum() == 2  # 1 read as 0 twice more, nothing else moved
    written = {text.get_position(): text.get_text() for text in figure.axes[0].texts}
    assert written == {(0, 0): "0", (0, 1): "+2", (1, 1): "-2", (2, 2): "0"}  # (column, row)
    markdown = report.markdown(base, target, ("", ""), [], curves=False)
    assert "Correct (the diagonal): base 14, target 12 (-2)." in markdown
    assert row(markdown, "`1`") == ["`1`", "`0`", "1", "3", "+2"]


# --- a record made on another machine, runs in a real store (quick: no training) -----------

RECORDED = {"test_accuracy": 0.9775, "test_loss": 0.0739108994603157}  # the committing machine's
RERUN = {"test_accuracy": 0.9777, "test_loss": 0.0738}  # this machine's, at the same params
HISTORY = [{"iteration": 3, "train_loss": 2.3, "train_accuracy": 0.1, "val_loss": 2.2,
            "val_accuracy": 0.15},
           {"iteration": 6, "train_loss": 2.1, "train_accuracy": 0.2, "val_loss": 2.0,
            "val_accuracy": 0.25}]  # fmt: skip
CONFUSION = [[5, 0, 0], [1, 4, 0], [0, 0, 5]]


def write_record(folder: Path, metrics: dict, confusion: list[list[int]], f1: float) -> None:
    """What evaluate writes to git (`cache: false`): metrics, per class, confusion rows."""
    reports = folder / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics))
    scores([f1] * 3).assign(support=5).to_csv(reports / "per_class.csv", index=False)
    rows = [(str(actual), str(predicted)) for actual, line in enumerate(confusion)
            for predicted, count in enumerate(line) for _ in range(count)]  # fmt: skip
    pd.DataFrame(rows, columns=["actual", "predicted"]).to_csv(reports / "confusion.csv",
                                                               index=False)  # fmt: skip


def log_run(repo: Path, tags: dict, metrics: dict) -> str:
    """A finished run as train and evaluate leave it: metrics and the history by iteration."""
    from mlflow.entities import Metric

    client = client_for(repo)
    experiment = client.get_experiment_by_name("mnist-lstm") or client.create_experiment(
        "mnist-lstm", (repo / "mlartifacts").as_uri()
    )
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    points = [Metric(key, value, 0, 0) for key, value in metrics.items()] + [
        Metric(key, interval[key], 0, interval["iteration"])
        for interval in HISTORY
        for key in report.HISTORY_METRICS
    ]
    client.log_batch(run_id, metrics=points)
    client.set_terminated(run_id)
    return run_id


def lineage_of(repo: Path, revision: str, cpu: str) -> dict[str, str]:
    """The lineage tags train sets: params hash, commit, a clean checkout, the CPU."""
    from pipeline.params import config
    from pipeline.tracking import lineage

    params = config.parse_params(yaml.safe_load(recorded(repo, revision, "params.yaml")))
    commit = run(["git", "rev-parse", revision], repo).stdout.strip()
    return {"params_sha256": lineage.params_sha256(params), "git_commit": commit,
            "git.dirty": "false", report.CPU_TAG: cpu}  # fmt: skip


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> tuple[Path, str]:
    """HEAD's record made elsewhere, a rerun of it here, a changed workspace: repo, rerun id."""
    repo = tiny_repo(tmp_path_factory.mktemp("elsewhere"))
    write_record(repo, RECORDED, CONFUSION, f1=0.97)
    commit(repo, "the record, made on the committing machine")
    rerun = log_run(repo, lineage_of(repo, "HEAD", "Local CPU"), RERUN)
    set_param(repo, "train.learning_rate", 0.002)
    target = log_run(repo, {report.CPU_TAG: "Local CPU"}, {"test_accuracy": 0.98})
    write_record(repo, {"test_accuracy": 0.98}, [[5, 0, 0], [0, 4, 1], [0, 0, 5]], f1=0.98)
    pd.DataFrame(HISTORY).to_csv(repo / "reports/train_history.csv", index=False)
    (repo / "models").mkdir(exist_ok=True)
    (repo / "models/mlflow_run.json").write_text(json.dumps({"run_id": target}))
    return repo, rerun


def test_a_base_whose_run_is_elsewhere_names_the_rerun_of_its_commit(elsewhere, monkeypatch):
    repo, rerun = elsewhere
    markdown = make_report(repo, "HEAD", "workspace", monkeypatch)
    head = run(["git", "rev-parse", "--short=7", "HEAD"], repo).stdout.strip()
    assert side_line(markdown, "Base").startswith(
        f"Base: `HEAD` (`{head}`), the committed record; MLflow run ["
    )
    assert side_line(markdown, "Base").endswith(
        f"/runs/{rerun}) `{rerun}` (a run of its commit at its params in this store, not the "
        "record's own, which is not here); made on Local CPU; gate: no verdict recorded."
    )
    assert row(markdown, "test_accuracy")[2:4] == ["0.9775", "0.98"]  # the records', DVC's
    assert "The base's curves are its MLflow run's metric history" in markdown
    assert (repo / "build/report" / report.CURVES_FILE).is_file()
    confusion = markdown.split("## Confusion change")[1]
    assert row(confusion, "`1`")[:3] == ["`1`", "`0`", "1"]  # the base's mistake, its record's


def test_a_base_without_its_run_record_is_matched_to_its_run_by_metrics(elsewhere, monkeypatch):
    """The record's own run in the store (as on a team server) is found by params and metrics."""
    repo, _ = elsewhere
    parent = lineage_of(repo, "HEAD~1", "Committing CPU") | {
        "params_sha256": lineage_of(repo, "HEAD", "")["params_sha256"]
    }
    own = log_run(repo, parent, RECORDED)
    try:
        markdown = make_report(repo, "HEAD", "workspace", monkeypatch)
    finally:
        client_for(repo).delete_run(own)
    assert side_line(markdown, "Base").endswith(
        f"/runs/{own}) `{own}` (its own, found by its params and metrics); made on Committing "
        "CPU; gate: no verdict recorded."
    )
    assert "- the sides trained on different CPU kinds (Committing CPU; Local CPU)" in markdown
