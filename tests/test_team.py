"""Team mode end to end: two clones, a real PostgreSQL and `mlflow server`, DVC remotes."""

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.data.files import sha256_file
from pipeline.team import postgres

from .support import (
    BIN,
    environment,
    free_port,
    postgres_missing,
    run,
    tiny_repo,
    wait_until_healthy,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(postgres_missing()), reason=postgres_missing() or "-"),
]
MODEL = "mnist-lstm"


@dataclass
class Team:
    base: Path
    origin: Path
    storage: Path  # the local DVC remote both clones use
    url: str  # the MLflow server
    state: Path  # team.state_dir: PostgreSQL cluster, artifacts, pid files

    def env(self, **extra: str) -> dict[str, str]:
        return environment(MLFLOW_TRACKING_URI=self.url, **extra)

    def server(self, action: str, repo: Path, *options: str, **env: str):
        command = [sys.executable, "-m", "pipeline.team.server", action, *options]
        return run(command, repo, env=environment(**env))

    def client(self):
        """An MLflow client of the server, tracking and registry named (never the process's)."""
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url, registry_uri=self.url)

    def clone(self, name: str) -> Path:
        run(["git", "clone", "-q", "-b", "main", str(self.origin), name], self.base)
        repo = self.base / name
        run(["dvc", "remote", "modify", "--local", "local", "url", str(self.storage)], repo)
        return repo


def reset(repo: Path) -> None:
    """Back to the committed workspace: `dvc exp run` and `dvc exp apply` leave theirs."""
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)


def post(url: str, path: str, body: dict, headers: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    base = tmp_path_factory.mktemp("team")
    # pytest's temporary folders are root's alone: the cluster's must be reachable by `postgres`
    state = Path(tempfile.mkdtemp(prefix="mnist-lstm-team-"))
    state.chmod(0o755)
    team = Team(base, base / "origin.git", base / "dvc-storage", "", state)
    a = tiny_repo(base, "a")
    port = free_port()
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["team"] |= {"port": port, "postgres_port": free_port(), "state_dir": str(state),
                       "workers": 1}  # fmt: skip
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "branch", "-M", "main"], a)
    run(["git", "commit", "-qam", "team server ports"], a)
    run(["git", "init", "-q", "--bare", str(team.origin)], base)
    run(["git", "remote", "add", "origin", str(team.origin)], a)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(team.storage)], a)
    try:
        team.server("start", a)
        team.url = f"http://127.0.0.1:{port}"
        yield team
    finally:
        team.server("stop", a)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(team):
    """A reproduced against the server and pushed; B cloned and pulled."""
    a = team.base / "a"
    run(["dvc", "repro"], a, env=team.env())
    pushed = run(["dvc", "push"], a)
    assert "files pushed" in pushed.stdout + pushed.stderr
    # what DVC keeps out of its cache (metrics, plots) travels in git, with dvc.lock
    run(["git", "add", "dvc.lock", "reports"], a)
    run(["git", "commit", "-qm", "trained against the team server"], a)
    run(["git", "push", "-q", "origin", "main"], a)
    b = team.clone("b")
    run(["dvc", "pull"], b)
    return a, b


def test_b_pulls_reproduces_nothing_and_opens_a_run_on_the_server(team, shared):
    a, b = shared  # B has pulled
    repro = run(["dvc", "repro"], b, env=team.env())
    assert "Running stage" not in repro.stdout and "up to date" in repro.stdout, repro.stdout
    for output in ("models/model.keras", "data/processed/test.npz", "reports/metrics.json"):
        assert sha256_file(b / output) == sha256_file(a / output), output
    run_id = json.loads((b / "models/mlflow_run.json").read_text())["run_id"]
    found = team.client().get_run(run_id)
    assert found.info.artifact_uri.startswith("mlflow-artifacts:")
    metrics = found.data.metrics
    accuracy = json.loads((b / "reports/metrics.json").read_text())["test_accuracy"]
    assert metrics["test_accuracy"] == pytest.approx(accuracy)
    code = (f"import mlflow, numpy as np; c = mlflow.MlflowClient()\n"
            f"v = c.get_model_version_by_alias('{MODEL}', 'champion')\n"
            f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
            f"p = m.predict(np.load('data/processed/test.npz')['x'][:5])\n"
            f"print(v.run_id, p.shape)")  # fmt: skip
    opened = run([sys.executable, "-c", code], b, env=team.env())  # as a user of clone B would
    assert opened.stdout.strip().splitlines()[-1] == f"{run_id} (5, 10)"


def scores_on(team: Team) -> dict[int, float]:
    """Each registered version's validation accuracy, as the server has them."""
    client = team.client()
    return {int(version.version): client.get_run(version.run_id).data.metrics["validation_accuracy"]
            for version in client.search_model_versions(f"name='{MODEL}'")}  # fmt: skip


@pytest.mark.heavy
def test_two_clones_training_at_once_both_land_and_the_champion_is_the_best(team, shared):
    a, b = shared
    before = scores_on(team)
    processes = [
        subprocess.Popen(
            ["dvc", "exp", "run", "-n", name, "-S", f"train.learning_rate={rate}"],
            cwd=repo,
            env=team.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for repo, name, rate in ((a, "lr-high", 0.02), (b, "lr-low", 0.0001))
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    scores = scores_on(team)
    reset(a)
    reset(b)
    assert len(scores) == len(before) + 2  # one experiment from each clone
    champion = team.client().get_model_version_by_alias(MODEL, "champion").version
    assert scores[int(champion)] == max(scores.values()), scores


@pytest.mark.heavy
def test_an_experiment_pushed_from_a_is_listed_and_applied_in_b(team, shared):
    a, b = shared
    # a rate no other test trains: DVC would restore that one's run from its run cache
    run(["dvc", "exp", "run", "-n", "pushed", "-S", "train.learning_rate=0.03"], a, env=team.env())
    reset(a)
    run(["dvc", "exp", "push", "origin", "pushed"], a)
    run(["dvc", "exp", "pull", "origin", "pushed"], b)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], b).stdout)
    names = {experiment.get("name") for row in shown for experiment in row.get("experiments") or []}
    assert "pushed" in names, shown
    run(["dvc", "exp", "apply", "pushed"], b)
    assert yaml.safe_load((b / "params.yaml").read_text())["train"]["learning_rate"] == 0.03
    run_id = json.loads((b / "models/mlflow_run.json").read_text())["run_id"]  # from the cache
    assert team.client().get_run(run_id).data.tags["dvc.exp_name"] == "pushed"
    reset(b)


def champion_files(team: Team) -> dict[str, str]:
    """The champion model's files, downloaded through the server: name → sha256."""
    import mlflow

    client = team.client()
    version = client.get_model_version_by_alias(MODEL, "champion").version
    folder = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(MODEL, version),
        tracking_uri=team.url, dst_path=tempfile.mkdtemp(dir=team.base),
    ))  # fmt: skip
    return {str(path.relative_to(folder)): sha256_file(path) for path in folder.rglob("*")
            if path.is_file()}  # fmt: skip


def everything(team: Team, run_id: str) -> dict:
    """Every run with its metrics, every model version, and one run's model card."""
    client, card = team.client(), f"{team.url}/get-artifact?path=model_card.md&run_uuid={run_id}"
    with urllib.request.urlopen(card, timeout=30) as response:
        card_bytes = response.read()
    return {"runs": sorted((r.info.run_id, r.info.status, sorted(r.data.metrics.items()))
                           for r in client.search_runs(["1"], max_results=100)),
            "versions": sorted((v.version, v.run_id, v.source)
                               for v in client.search_model_versions(f"name='{MODEL}'")),
            "card": card_bytes}  # fmt: skip


@pytest.mark.heavy
def test_a_restart_of_server_and_postgres_keeps_every_run_metric_artifact_and_version(team, shared):
    a, _ = shared
    run_id = json.loads((a / "models/mlflow_run.json").read_text())["run_id"]
    before, model_before = everything(team, run_id), champion_files(team)
    team.server("stop", a)
    cluster = postgres.PostgresCluster(team.state / "postgres", 0)
    assert not cluster.running()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{team.url}/health", timeout=2)
    team.server("start", a)
    assert everything(team, run_id) == before
    assert champion_files(team) == model_before


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def moto_s3(log: Path):
    """moto's S3 server on 127.0.0.1 with a bucket `team`; its URL. Stopped by its pid."""
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/moto-api/", server, log)
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing",
                     ).create_bucket(Bucket="team")  # fmt: skip
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def use_s3_remote(repo: Path, endpoint: str) -> None:
    """The documented team remote: the URL may be committed, the endpoint stays local."""
    run(["dvc", "remote", "add", "--local", "-f", "-d", "s3", "s3://team/dvc"], repo)
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], repo)


@pytest.mark.heavy
def test_s3_remote_pushes_and_pulls_and_unreachable_fails_with_one_line(team, shared, tmp_path):
    a, _ = shared
    with moto_s3(tmp_path / "moto.log") as endpoint:
        use_s3_remote(a, endpoint)
        pushed = run(["dvc", "push"], a, env=environment(**S3_KEYS))
        assert "files pushed" in pushed.stdout + pushed.stderr
        c = team.clone("c")  # its default remote is then the S3 one
        use_s3_remote(c, endpoint)
        run(["dvc", "pull"], c, env=environment(**S3_KEYS))
    assert sha256_file(c / "models/model.keras") == sha256_file(a / "models/model.keras")
    outputs = ("models/model.keras", "data/processed/train.npz")
    kept = {path: sha256_file(c / path) for path in outputs}
    failed = run(["dvc", "push"], c, check=False, env=environment(**S3_KEYS))  # moto is gone
    lines = [line for line in (failed.stdout + failed.stderr).splitlines() if line.strip()]
    assert failed.returncode != 0, lines
    assert len([line for line in lines if line.startswith("ERROR")]) == 1, lines
    assert {path: sha256_file(c / path) for path in kept} == kept
    assert run(["dvc", "status"], c).stdout.strip().endswith("up to date.")


@pytest.mark.heavy
def test_with_basic_auth_a_request_without_credentials_is_refused_and_with_them_a_run_lands(
    team, shared, tmp_path
):
    a, _ = shared
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["team"] |= {"port": (port := free_port()), "state_dir": str(tmp_path / "auth")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    password = "a-Long-test-passw0rd!"
    url, options = f"http://127.0.0.1:{port}", ("--params", str(tmp_path / "params.yaml"))
    # the team's PostgreSQL store as an existing database: its migrations are done already
    store = postgres.PostgresCluster(team.state / "postgres", params["team"]["postgres_port"])
    team.server("start", a, "--auth", *options, MLFLOW_AUTH_ADMIN_PASSWORD=password,
                MLFLOW_BACKEND_STORE_URI=store.url("mlflow"))  # fmt: skip
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(url, "experiments/search", {"max_results": 1})
        assert refused.value.code == 401
        user = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        for stage in ("train", "evaluate"):
            run([sys.executable, "-m", f"pipeline.{stage}"], a,
                env=environment(MLFLOW_TRACKING_URI=url, **user))  # fmt: skip
        run_id = json.loads((a / "models/mlflow_run.json").read_text())["run_id"]
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        query = {"experiment_ids": ["1"], "filter": f"attributes.run_id = '{run_id}'"}
        found = post(url, "runs/search", query, {"Authorization": f"Basic {token}"})["runs"]
        assert [run["info"]["status"] for run in found] == ["FINISHED"]
    finally:
        team.server("stop", a, *options)


@pytest.mark.heavy
def test_training_fails_with_one_line_when_the_server_goes_away(team, shared):
    a, _ = shared
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["train"] |= {"iterations": 999_999, "log_every": 3}
    (a / "long.yaml").write_text(yaml.safe_dump(params))
    model_before = sha256_file(a / "models/model.keras")
    stage = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--params", "long.yaml"],
                             cwd=a, env=team.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        for line in stage.stdout:
            if "iteration 6/" in line:
                break
        server = int((team.state / "mlflow-server.pid").read_text())
        os.killpg(server, signal.SIGKILL)  # the server dies, as a crash would
        # a generous deadline that guards against a hang only: store.SERVER_TIMEOUT and
        # SERVER_RETRIES end the stage well before it
        rest = stage.communicate(timeout=120)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            stage.kill()
        team.server("stop", a)  # PostgreSQL, the server already gone; then both again
        team.server("start", a)
    last = rest.strip().splitlines()[-1]
    assert stage.returncode == 1, rest
    assert last.startswith(f"error: MLflow tracking server {team.url} stopped answering"), rest
    assert "Traceback" not in rest
    assert sha256_file(a / "models/model.keras") == model_before  # the last good model is untouched
