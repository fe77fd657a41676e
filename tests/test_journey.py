"""The README walked in its order, in a scratch clone, checking that the views agree where they
meet: each view names the model it speaks of, and it is the same model everywhere.

repro → change a hyperparameter → repro → params and metrics diff → report → serve the
champion and post clean test images → monitor → promote and back → the store switched.
"""

import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .support import client_for, environment, post_json, run, running, tiny_repo

pytestmark = pytest.mark.slow

NAME = "mnist-lstm"


def alias(repo: Path, name: str) -> int | None:
    try:
        return int(client_for(repo).get_model_version_by_alias(NAME, name).version)
    except Exception:  # MLflow's exception for an alias that points nowhere
        return None


def version_run(repo: Path, version: int):
    client = client_for(repo)
    return client.get_run(client.get_model_version(NAME, str(version)).run_id)


def python(repo: Path, module: str, *args: str, check: bool = True, env: dict | None = None):
    """`python -m module args` in the repo, as its Makefile target runs it."""
    return run([sys.executable, "-m", module, *args], repo, check=check, env=env)


def check_one_verdict(output: str) -> None:
    """Each check's line and one closing sentence that agrees with them."""
    lines = [line for line in output.splitlines() if " gate: " in line]
    closing = [line for line in lines if "release checks " in line]
    assert len(closing) == 1, lines
    failed = [line for line in lines if line.endswith(": FAILED")]
    assert ("release checks FAILED" in closing[0]) == bool(failed), lines


def serve_and_post(repo: Path, tmp_path: Path, images: np.ndarray) -> dict:
    """`make serve` on the champion, the images posted in batches of 20; its /version."""
    args = ["--params", str(repo / "params.yaml")]
    with running("pipeline.serving.serve", args, "/ping", tmp_path / "serve.log",
                 env={"DVC_ROOT": str(repo)}, cwd=repo) as server:  # fmt: skip
        with urllib.request.urlopen(server.url + "/version", timeout=30) as response:
            version = json.loads(response.read())
        for batch in np.array_split(images, max(1, len(images) // 20)):
            body = json.dumps({"inputs": batch.tolist()}).encode()
            assert post_json(server.url + "/invocations", body)[0] == 200
    return version


def test_the_readme_walked_in_order_tells_one_story(tmp_path):
    repo = tiny_repo(tmp_path)
    run(["git", "branch", "-M", "main"], repo)
    # make repro, then the baseline committed as main commits it
    check_one_verdict(run(["dvc", "repro"], repo).stderr)
    assert alias(repo, "champion") == 1
    run(["git", "add", "dvc.lock", "reports/", "params.yaml"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    commit = run(["git", "rev-parse", "--short", "HEAD"], repo).stdout.strip()

    # "Change a hyperparameter and compare"
    params_file = repo / "params.yaml"
    params_file.write_text(
        params_file.read_text().replace("learning_rate: 0.001", "learning_rate: 0.002")
    )
    second = run(["dvc", "repro"], repo)
    ran = [line.split("'")[1] for line in second.stdout.splitlines() if "Running stage" in line]
    assert ran == ["train", "evaluate"], second.stdout  # only the stages that read the param
    check_one_verdict(second.stderr)
    champion = alias(repo, "champion")
    other = 2 if champion == 1 else 1
    assert alias(repo, "challenger") == other  # both passed the tiny gate; one is champion
    named = version_run(repo, 2).info.run_name
    assert named == f"{commit} train.learning_rate=0.002", named
    assert "0.001" in (diff := run(["dvc", "params", "diff"], repo).stdout) and "0.002" in diff
    assert "test_accuracy" in run(["dvc", "metrics", "diff"], repo).stdout
    python(repo, "pipeline.tools.report")
    report = (repo / "build/report/report.md").read_text()
    assert "Base:" in report, report[:2000]

    # serve the champion, post clean test images, monitor
    test_images = np.load(repo / "data/processed/test.npz")["x"]
    served = serve_and_post(repo, tmp_path, np.concatenate([test_images] * 4))
    assert served["pinned"] == f"models:/{NAME}/{champion}"
    # the first start after dvc repro asks MLflow nothing: evaluate left the answer in .serve/
    said = f"models:/{NAME}@champion is models:/{NAME}/{champion} (store unchanged)"
    assert said in (tmp_path / "serve.log").read_text()
    assert Path(served["path"]).is_relative_to(repo / ".serve")
    monitored = python(repo, "pipeline.monitoring.monitor", "--since", "1h", check=False)
    assert monitored.returncode == 0, monitored.stderr
    page = (repo / ".monitor/report.md").read_text()
    champion_run = version_run(repo, champion).info.run_id
    assert f"## Served: models:/{NAME}/{champion} (" in page
    assert f"Reference: its evaluate run {champion_run}" in page and "**No drift**" in page
    assert champion_run in monitored.stderr

    # make promote, and back: champion and challenger keep their meaning
    promoted = python(repo, "pipeline.tools.promote", "--version", str(other), "--reason", "try")
    assert f"{NAME}@champion: version {champion} → version {other}" in promoted.stderr
    assert (alias(repo, "champion"), alias(repo, "challenger")) == (other, champion)
    python(repo, "pipeline.tools.promote", "--version", str(champion), "--reason", "back")
    assert (alias(repo, "champion"), alias(repo, "challenger")) == (champion, other)

    # the store switched: train's params DVC has seen restore it from its run cache (the local
    # store's run), a gate param it has not makes evaluate run: one line, no traceback
    run(["git", "checkout", "params.yaml"], repo)
    changed = params_file.read_text().replace("behaviour_images: 1000", "behaviour_images: 30")
    assert changed != params_file.read_text()
    params_file.write_text(changed)
    team = f"sqlite:///{tmp_path / 'team.db'}"
    switched = run(["dvc", "repro"], repo, check=False,
                   env=environment(MLFLOW_TRACKING_URI=team))  # fmt: skip
    assert switched.returncode != 0 and "Traceback" not in switched.stderr, switched.stderr
    errors = [line for line in switched.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and team in errors[0] and "dvc repro -f train" in errors[0], errors
    assert f"sqlite:///{(repo / 'mlflow.db').resolve()}" in errors[0]
