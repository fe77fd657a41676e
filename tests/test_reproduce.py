"""`make reproduce`: a model rebuilt from its lineage, judged, and nothing else touched."""

import datetime
import json
import shlex
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest
import yaml

import pipeline.tracking.lineage as lineage
from pipeline.params import config, tools
from pipeline.runtime import processes
from pipeline.tools import reproduce

from .support import REPO, client_for, environment, run, run_queue, tiny_repo

MODULE = ["python", "-m", "pipeline.tools.reproduce"]


def record(weights: str | None = "w1", accuracy: float = 0.98, loss: float = 0.07, **tags):
    recorded = {"env.tensorflow": "2.21.0", "data.train_sha256": "d1"} | tags
    if weights:
        recorded[lineage.WEIGHTS_TAG] = weights
    return reproduce.RunRecord("run", recorded, {"test_accuracy": accuracy, "test_loss": loss})


@pytest.mark.parametrize(
    ("original", "again", "kind", "code", "said"),
    [
        (record(), record(), reproduce.BIT_IDENTICAL, 0, []),
        (record(), record("w2", accuracy=0.978, loss=0.075, **{"env.tensorflow": "2.22.0"}),
         reproduce.WITHIN_TOLERANCE, 3, ["env.tensorflow: 2.21.0 → 2.22.0", "weights: other bytes",
                                         "test_accuracy: 0.98"]),
        (record(), record("w2", accuracy=0.90, **{"data.train_sha256": "d2"}),
         reproduce.NOT_REPRODUCED, 4, ["data.train_sha256: d1 → d2"]),
        # a run without a weights hash is never called bit-identical
        (record(weights=None), record(), reproduce.WITHIN_TOLERANCE, 3,
         ["recorded no model.weights_sha256"]),
    ],
)  # fmt: skip
def test_the_verdict_and_what_it_says_differs(original, again, kind, code, said):
    judged = reproduce.compare(original, again)
    assert (judged.kind, judged.exit_code) == (kind, code)
    assert all(any(part in line for line in judged.differences) for part in said)
    assert said or judged.differences == []


STAGE_OUTPUT = """
import sys
print("Successfully registered model 'mnist-lstm'.")
sys.stderr.write("INFO pipeline.evaluate: mnist-lstm@champion is now version 1\\n")
print("evaluated")
sys.exit(int(sys.argv[1]))
"""


def stages_printing(folder: Path, evaluate_exit: int) -> Path:
    """A revision whose train and evaluate print what the real ones print about the registry."""
    commands = {
        name: {"cmd": shlex.join(["python", "-c", STAGE_OUTPUT, str(code)])}
        for name, code in (("train", 0), ("evaluate", evaluate_exit))
    }
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": commands}))
    return folder


def test_the_stages_lines_are_marked_as_the_scratch_stores_and_a_failure_stops(tmp_path, capsys):
    scratch = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'scratch.db'}"}
    with pytest.raises(reproduce.ReproduceError, match="evaluate stage failed .exit 3."):
        reproduce.run_stages(stages_printing(tmp_path, 3), processes.tools_environment() | scratch)
    assert capsys.readouterr().err.splitlines() == 2 * [
        "[scratch store] Successfully registered model 'mnist-lstm'.",
        "[scratch store] INFO pipeline.evaluate: mnist-lstm@champion is now version 1",
        "[scratch store] evaluated",
    ]


def test_logged_params_restore_params_yaml_exactly_and_keep_the_tools_settings(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edited = json.loads(json.dumps(raw))
    edited["train"] |= {"learning_rate": 1e-05, "iterations": 3000, "deterministic": False}
    edited["data"]["class_names"] = list("abcdefghij")
    edited["mlflow"]["experiment"] = "123"  # a string that looks like a number stays a string
    edited["serve"]["port"] = 1234  # a tool's setting: not the run's, not restored
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("e", (tmp_path / "artifacts").as_uri()))
    client.log_dict(run.info.run_id, lineage.stage_params(tools.parse_params(edited)),
                    lineage.PARAMS_ARTIFACT)  # fmt: skip
    source = tmp_path / "worktree" / "src"
    source.mkdir(parents=True)
    (source / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    reproduce.restore_params(source, client, run.info.run_id)
    restored = yaml.safe_load((source / "params.yaml").read_text())
    assert config.parse_params(restored) == config.parse_params(edited)
    assert restored["serve"] == raw["serve"] and list(restored) == list(raw)
    with pytest.raises(reproduce.ReproduceError, match="has no params.json artifact"):
        reproduce.restore_params(
            source, client, client.create_run(run.info.experiment_id).info.run_id
        )


@pytest.fixture
def bare_repo(tmp_path) -> tuple[Path, mlflow.MlflowClient]:
    """A git repo with DVC's folder and an empty store: enough for the lineage checks."""
    run(["git", "init", "-q"], tmp_path)
    (tmp_path / ".dvc").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment("mnist-lstm")
    return tmp_path, client


def reproduce_in(repo: Path, *args: str, **env: str):
    """Run the tool in `repo` with a temporary folder of its own, which must be left empty."""
    scratch = Path(tempfile.mkdtemp(prefix="tmp-", dir=repo.parent))
    result = run([*MODULE, *args], repo, False, environment(TMPDIR=str(scratch), **env))
    assert not list(scratch.glob("reproduce-*")), "the worktree or scratch store was left behind"
    return result


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, "has no lineage tags (git_commit)"),
        ({"git_commit": "0" * 40}, "is not in this repository: git fetch it"),
        ({"git_commit": "0" * 40, "dvc.exp_name": "ghost"}, "experiment ghost"),
        (None, "models:/mnist-lstm/9 is not in the registry"),  # a model, not a run
    ],
)
def test_a_run_or_model_that_cannot_be_rebuilt_gets_one_line(bare_repo, tags, expected):
    repo, client = bare_repo
    experiment = client.get_experiment_by_name("mnist-lstm").experiment_id
    args = ("--model", "models:/mnist-lstm/9") if tags is None else (
        "--run", client.create_run(experiment, tags=tags).info.run_id)  # fmt: skip
    result = reproduce_in(repo, "--params", str(REPO / "params.yaml"), *args,
                          MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last


# --- on the tiny pipeline: real training, twice per reproduction (the heavy tier) -------------


def workspace(repo: Path) -> dict:
    """What a reproduction must leave as it was: git state, params, lock, registry."""
    client = client_for(repo)
    return {
        "status": run(["git", "status", "--porcelain"], repo).stdout,
        "worktrees": run(["git", "worktree", "list"], repo).stdout,
        "params": (repo / "params.yaml").read_bytes(),
        "lock": (repo / "dvc.lock").read_bytes(),
        "versions": sorted(v.version for v in client.search_model_versions("name='mnist-lstm'")),
        "champion": client.get_model_version_by_alias("mnist-lstm", "champion").version,
    }


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """v1 from the first commit, v2 from uncommitted params, then a commit changing weights."""
    repo = tiny_repo(tmp_path_factory.mktemp("reproduce"))
    run(["dvc", "repro"], repo)
    params = repo / "params.yaml"
    committed = params.read_text()
    params.write_text(committed.replace("iterations: 6", "iterations: 9"))
    run(["dvc", "repro"], repo)
    params.write_text(committed)
    model = repo / "pipeline/training/network.py"
    model.write_text(model.read_text().replace("= forget_bias\n", "= forget_bias + 0.5\n"))
    run(["git", "commit", "-qam", "a later commit: another forget-gate start"], repo)
    run(["dvc", "repro"], repo)
    return repo


def reproduced(repo: Path, version: int) -> tuple[str, dict[str, str]]:
    """Reproduce a version: its verdict line, and the tags it left on the original run."""
    before = workspace(repo)
    result = reproduce_in(repo, "--model", f"models:/mnist-lstm/{version}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert workspace(repo) == before
    client = client_for(repo)
    tags = client.get_run(client.get_model_version("mnist-lstm", str(version)).run_id).data.tags
    return result.stderr, tags


@pytest.mark.heavy
def test_versions_reproduce_bit_identical_from_their_commit_or_their_logged_params(history):
    client = client_for(history)
    first, third = (client.get_model_version("mnist-lstm", v).run_id for v in ("1", "3"))
    weights = [client.get_run(r).data.tags[lineage.WEIGHTS_TAG] for r in (first, third)]
    assert weights[0] != weights[1]  # the later commit changed the result
    output, tags = reproduced(history, 1)
    assert ": bit-identical" in output
    checked = datetime.datetime.fromisoformat(tags["reproduce.date"])
    assert tags["reproduce.verdict"] == "bit-identical"
    assert checked.date() == datetime.datetime.now(datetime.UTC).date()
    output, tags = reproduced(history, 2)  # trained from uncommitted params
    assert tags["git.dirty"] == "true" and "params.yaml" in tags["git.changed_files"]
    assert ": bit-identical" in output and "params as the run logged them" in output
    assert "params as the run logged them" in tags["reproduce.details"]


@pytest.mark.heavy
def test_data_in_neither_cache_nor_remote_nor_its_source_fails_with_one_line(history):
    cache, mirror = history / ".dvc/cache", history.parent / "mirror"
    shutil.move(cache, history.parent / "cache-away")
    shutil.move(mirror, history.parent / "mirror-away")
    try:
        result = reproduce_in(history, "--model", "models:/mnist-lstm/1")
    finally:
        shutil.move(history.parent / "cache-away", cache)
        shutil.move(history.parent / "mirror-away", mirror)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1
    assert "is in neither the DVC cache nor a remote" in last and "no MNIST source" in last
    assert run(["git", "worktree", "list"], history).stdout.count("\n") == 1


@pytest.mark.heavy
def test_a_queued_experiment_reproduces_in_a_second_clone_that_pulls_it(tmp_path):
    storage, origin = tmp_path / "dvc-storage", tmp_path / "origin.git"
    env = environment(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'shared.db'}")
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    one = tiny_repo(tmp_path, "one")
    run(["git", "remote", "add", "origin", str(origin)], one)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], one)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(storage)], one)
    run(["dvc", "exp", "run", "--queue", "-S", "train.iterations=9"], one, env=env)
    assert "Failed" not in run_queue(one, env=env)
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    original = client.get_run(client.get_model_version("mnist-lstm", "1").run_id)
    name = original.data.tags["dvc.exp_name"]
    run(["dvc", "exp", "push", "origin", name], one, env=env)
    run(["dvc", "push", "--run-cache"], one, env=env)
    shutil.rmtree(tmp_path / "mirror")  # the data now lives only in clone one and the remote
    two = tmp_path / "two"
    run(["git", "clone", "-q", "-b", "main", str(origin), str(two)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(storage)], two)
    result = reproduce_in(two, "--model", "models:/mnist-lstm/1", **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from experiment {name}" in result.stderr and ": bit-identical" in result.stderr
    assert name in run(["git", "for-each-ref", "refs/exps/"], two).stdout
    tags = client.get_run(original.info.run_id).data.tags
    assert tags["reproduce.verdict"] == "bit-identical"
