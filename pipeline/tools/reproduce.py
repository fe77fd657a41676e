"""`make reproduce`: rebuild a registered model (or any training run) from its lineage and judge it.

    python -m pipeline.tools.reproduce [--model models:/mnist-lstm/3 | --run RUN_ID]

The run's revision in a temporary git worktree, its `train` and `evaluate` run against a scratch
store, the verdict tagged on the original run (docs/reliability.md). Exit codes: 0 bit-identical,
3 within tolerance, 4 not reproduced, 1 could not reproduce.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

import pipeline.params.config as config
import pipeline.runtime.processes as processes
import pipeline.tracking.lineage as lineage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import sha256_file
from pipeline.runtime import cli
from pipeline.tools import verdict as verdicts

log = logging.getLogger(__name__)

TAG_PREFIX = "reproduce."
MAX_TAG_CHARS = 5000
# Variables of the caller's own DVC, MLflow or search that must not reach the reproduction.
SCRUBBED_PREFIXES = ("MLFLOW_", "DVC_", "PIPELINE_")
SCRATCH_MARK = "[scratch store] "  # before each line the stages print


class ReproduceError(Exception):
    """The run cannot be reproduced; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Source:
    """Where the run's code and params come from."""

    revision: str
    description: str
    logged_params: bool  # params.yaml rebuilt from the run's params.json


def execute(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ReproduceError(f"`{' '.join(args)}` failed in {cwd}: {cause(result)}")
    return result


def cause(result: subprocess.CompletedProcess) -> str:
    """A failed command's reason, for a sentence of our own: without its `error:` prefix."""
    reason = processes.failure_reason(result.stderr + result.stdout, f"exit {result.returncode}")
    return reason.removeprefix("error: ").removeprefix("ERROR: ")


def run_id_of(client, model: str | None, run_id: str | None, registered: str) -> str:
    """The training run behind a model URI (`models:/name/N`, `models:/name@alias`) or a run id."""
    import mlflow

    if run_id:
        return run_id
    uri = model or registry.champion_uri(registered)
    try:
        version = registry.registered_version(client, uri)
    except mlflow.exceptions.MlflowException as error:
        raise ReproduceError(f"{uri} is not in the registry: {error.message}") from None
    if version is None:
        raise ReproduceError(
            f"{uri}: give a registered model as models:/NAME/VERSION or "
            "models:/NAME@ALIAS, or a run with --run RUN_ID"
        )
    if not version.run_id:
        raise ReproduceError(f"{uri} names no training run: it was not logged by this pipeline")
    return version.run_id


def record_of(client, run_id: str) -> verdicts.RunRecord:
    import mlflow

    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ReproduceError(f"run {run_id} is not in the store: {error.message}") from None
    return verdicts.RunRecord(run_id, dict(run.data.tags), dict(run.data.metrics))


def experiment_ref(root: Path, name: str) -> str | None:
    refs = execute(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], root).stdout
    found = [ref for ref in refs.split() if ref.endswith(f"/{name}")]
    return found[0] if found else None


def pulled_experiment_ref(root: Path, name: str, baseline: str) -> str:
    """The experiment's ref, pulled from the repo's git remotes when it is not here."""
    ref = experiment_ref(root, name)
    remotes = execute(["git", "remote"], root).stdout.split()
    for remote in remotes:
        if ref:
            break
        log.info("experiment %s is not in this repository: dvc exp pull %s %s", name, remote, name)
        execute(["dvc", "exp", "pull", "--no-cache", remote, name], root, check=False)
        ref = experiment_ref(root, name)
    if not ref:
        where = f"nor on its git remotes ({', '.join(remotes)})" if remotes else "(no git remote)"
        raise ReproduceError(
            f"experiment {name} (baseline {baseline[:7]}) is neither in this repository {where}: "
            f"push it from the clone that ran it (dvc exp push origin {name})"
        )
    return ref


def source_of(root: Path, original: verdicts.RunRecord) -> Source:
    """The revision to check out, from the run's lineage tags."""
    tags = original.tags
    commit = tags.get("git_commit")
    if not commit:
        raise ReproduceError(
            f"run {original.run_id} has no lineage tags (git_commit): it was "
            "made outside a git repository or by older code; retrain it"
        )
    if tags.get("dvc.exp_name"):
        ref = pulled_experiment_ref(root, tags["dvc.exp_name"], tags.get("dvc.baseline_rev", ""))
        revision = execute(["git", "rev-parse", ref], root).stdout.strip()
        return Source(revision, f"experiment {tags['dvc.exp_name']} ({ref})", False)
    exists = execute(["git", "cat-file", "-e", f"{commit}^{{commit}}"], root, check=False)
    if exists.returncode != 0:
        raise ReproduceError(
            f"commit {commit[:12]} of run {original.run_id} is not in this "
            "repository: git fetch it from the clone that made the run"
        )
    dirty = tags.get("git.dirty") == "true"
    described = f"commit {commit[:12]}" + (", params as the run logged them" if dirty else "")
    return Source(commit, described, dirty)


@contextlib.contextmanager
def worktree(root: Path, revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision` in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="reproduce-"))
    source = folder / "src"
    try:
        execute(["git", "worktree", "add", "--detach", "--quiet", str(source), revision], root)
        yield source
    finally:
        execute(["git", "worktree", "remove", "--force", str(source)], root, check=False)
        execute(["git", "worktree", "prune"], root, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def restore_params(source: Path, client, run_id: str) -> None:
    """The revision's params.yaml with the stage params the run logged, exactly as validated,
    in place of its own (the tools' settings, which no run logs, stay the revision's)."""
    import mlflow

    try:
        logged = client.download_artifacts(run_id, lineage.PARAMS_ARTIFACT, str(source.parent))
        stage_params = json.loads(Path(logged).read_text())
    except (mlflow.exceptions.MlflowException, OSError, ValueError):
        raise ReproduceError(
            f"run {run_id} was made from uncommitted params and has no {lineage.PARAMS_ARTIFACT} "
            "artifact (older code logged none): its params cannot be restored exactly"
        ) from None
    path = source / config.PARAMS_FILE
    path.write_text(
        yaml.safe_dump(yaml.safe_load(path.read_text()) | stage_params, sort_keys=False)
    )


def attach_dvc(root: Path, source: Path, env: dict[str, str]) -> None:
    """Give the worktree this repo's DVC cache and remotes (relative URLs made absolute)."""
    from dvc.repo import Repo

    local = root / ".dvc" / "config.local"
    if local.exists():
        shutil.copy2(local, source / ".dvc" / "config.local")
    with Repo(str(root)) as repo:  # DVC's own reading of the config: paths resolved
        cache, remotes = repo.cache.local_cache_dir, dict(repo.config["remote"])
    execute(["dvc", "config", "--local", "cache.dir", str(cache)], source, env)
    for name, settings in remotes.items():
        if "://" not in settings["url"]:  # a path remote, relative to the repo's .dvc folder
            execute(
                ["dvc", "remote", "modify", "--local", name, "url", settings["url"]], source, env
            )


def restore_data(source: Path, env: dict[str, str], original: verdicts.RunRecord) -> None:
    """The revision's training data, through its own pipeline up to `train`, checked by hash."""
    stages = yaml.safe_load((source / "dvc.yaml").read_text())["stages"]
    upstream = [name for name in stages if name not in ("train", "evaluate")]
    result = execute(["dvc", "repro", "--pull", *upstream], source, env, check=False)
    if result.returncode != 0:
        raise ReproduceError(
            f"the data of {original.run_id} is in neither the DVC cache nor a remote, and the "
            f"revision's pipeline could not make it again ({cause(result)}); "
            "`dvc pull` it in a clone at that revision, or restore its source"
        )


def data_differences(source: Path, original: verdicts.RunRecord) -> list[str]:
    paths = yaml.safe_load((source / config.PARAMS_FILE).read_text())["paths"]
    lines = []
    for split in ("train", "val"):
        recorded = original.tags.get(f"data.{split}_sha256")
        digest = sha256_file(source / paths[f"{split}_split"])
        if recorded and recorded != digest:
            lines.append(f"data.{split}_sha256: {recorded[:12]} → {digest[:12]}")
    return lines


def stage_environment(scratch: Path, source: Path) -> dict[str, str]:
    scrubbed = processes.tools_environment(processes.environment_without(*SCRUBBED_PREFIXES))
    return scrubbed | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        "PYTHONPATH": str(source),  # the revision's package, not the one installed here
        "DVC_NO_ANALYTICS": "1",
    }


def relayed(args: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run a command, each line of its output shown as it comes marked SCRATCH_MARK; its code."""
    unbuffered = env | {"PYTHONUNBUFFERED": "1"}  # lines as they are written, in order
    with subprocess.Popen(
        args, cwd=cwd, env=unbuffered, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    ) as child:  # fmt: skip
        try:
            for line in child.stdout:
                sys.stderr.write(SCRATCH_MARK + line)
        except BaseException:  # Ctrl-C, SIGTERM: as subprocess.run does, the child goes too
            child.kill()
            child.wait()
            raise
        return child.wait()


def run_stages(source: Path, env: dict[str, str]) -> None:
    """The revision's own `train` and `evaluate` commands, output shown as they run."""
    stages = yaml.safe_load((source / "dvc.yaml").read_text())["stages"]
    log.info(
        "train and evaluate run against a scratch store (%s): the lines marked %s are "
        "about it, and its registry, not yours",
        env["MLFLOW_TRACKING_URI"],
        SCRATCH_MARK.strip(),
    )
    for name in ("train", "evaluate"):
        args = shlex.split(stages[name]["cmd"])
        if args[0] in ("python", "python3"):
            args[0] = sys.executable
        log.info("reproduction: %s", " ".join(args))
        code = relayed(args, source, env)
        if code != 0:
            raise ReproduceError(f"the revision's {name} stage failed (exit {code}); see above")


def reproduction_of(source: Path, env: dict[str, str]) -> verdicts.RunRecord:
    paths = yaml.safe_load((source / config.PARAMS_FILE).read_text())["paths"]
    run_id = json.loads((source / paths["run_info"]).read_text())["run_id"]
    return record_of(tracking.client_for(env["MLFLOW_TRACKING_URI"]), run_id)


def reproduce(root: Path, client, original: verdicts.RunRecord) -> verdicts.Reproduction:
    """Rebuild the run in a worktree against a scratch store; judge the result."""
    source_info = source_of(root, original)
    log.info("reproducing run %s from %s", original.run_id, source_info.description)
    with worktree(root, source_info.revision) as source:
        env = stage_environment(source.parent, source)
        if source_info.logged_params:
            restore_params(source, client, original.run_id)
        attach_dvc(root, source, env)
        restore_data(source, env, original)
        data = data_differences(source, original)
        run_stages(source, env)
        judged = verdicts.compare(original, reproduction_of(source, env))
    notes = [f"from {source_info.description}"] + data
    changed = original.tags.get("git.changed_files", "")
    code = [name for name in changed.split(",") if name and name != config.PARAMS_FILE]
    if source_info.logged_params and code:
        notes.append(
            f"uncommitted changes to {', '.join(code)} were not recorded: rebuilt as committed"
        )
    return verdicts.Reproduction(judged.kind, judged.differences + notes)


def record_verdict(client, run_id: str, judged: verdicts.Reproduction) -> None:
    """Tag the original run, so the registry shows which versions were checked and how."""
    summary = "; ".join(judged.differences)
    client.set_tag(run_id, f"{TAG_PREFIX}verdict", judged.kind)
    client.set_tag(run_id, f"{TAG_PREFIX}date", datetime.datetime.now(datetime.UTC).isoformat())
    client.set_tag(run_id, f"{TAG_PREFIX}details", summary[:MAX_TAG_CHARS] or "-")


def run(params: config.Params, model: str | None, run_id: str | None) -> verdicts.Reproduction:
    import mlflow

    root = tracking.repo_root()
    tracking.connect(params.mlflow, root)
    client = mlflow.MlflowClient()
    target = run_id_of(client, model, run_id, params.mlflow.registered_model)
    original = record_of(client, target)
    judged = reproduce(root, client, original)
    record_verdict(client, target, judged)
    log.info(
        "the scratch store is removed; %s got no run and no version, only the verdict's "
        "%s* tags on run %s",
        tracking.tracking_uri(params.mlflow, root),
        TAG_PREFIX,
        target,
    )
    log.info("run %s: %s", target, judged.kind)
    for line in judged.differences:
        log.info("  %s", line)
    return judged


ARGUMENTS = {
    "--model": {"exclusive": True, "help": "a registered model (default: models:/<name>@champion)"},
    "--run": {"exclusive": True, "dest": "run_id", "metavar": "RUN", "help": "a run's id"},
}


def main(argv: list[str] | None = None) -> None:
    expected, load = (ReproduceError, tracking.TrackingError), config.load_params_or_exit
    interrupted = "interrupted; the worktree and scratch store are removed"  # SIGTERM too
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, load, interrupted)


if __name__ == "__main__":
    main()
