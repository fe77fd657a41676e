"""`make reproduce`: rebuild a registered model (or any training run) from its lineage and judge it.

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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import pipeline.params.config as config
import pipeline.runtime.processes as processes
import pipeline.tracking.lineage as lineage
import pipeline.tracking.registry as registry
import pipeline.tracking.store as tracking
from pipeline.data.files import sha256_file
from pipeline.runtime import cli

log = logging.getLogger(__name__)

TAG_PREFIX = "reproduce."
# Variables of the caller's own DVC, MLflow or search that must not reach the reproduction.
SCRUBBED_PREFIXES = ("MLFLOW_", "DVC_", "PIPELINE_")
SCRATCH_MARK = "[scratch store] "  # before each line the stages print
BIT_IDENTICAL = "bit-identical"
WITHIN_TOLERANCE = "reproduced within tolerance"
NOT_REPRODUCED = "not reproduced"
EXIT_CODES = {BIT_IDENTICAL: 0, WITHIN_TOLERANCE: 3, NOT_REPRODUCED: 4}
# 0.005 is 50 of the 10,000 test images; the loss bound is of the same order relative to a
# loss near 0.07. Both far exceed what summation order changes, far below what a bug costs.
ACCURACY_TOLERANCE = 0.005
LOSS_TOLERANCE = 0.02
# Tags whose values shape the result besides code and params: compared, and listed if they differ.
SHAPING_PREFIXES = (lineage.ENV_PREFIX, "tensorflow.", "data.", "params_sha256")


class ReproduceError(Exception):
    """The run cannot be reproduced; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class RunRecord:
    """What is compared of a run: its tags and metrics."""

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Reproduction:
    """What came out of a reproduction: one of the three verdicts and what differs."""

    kind: str
    differences: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


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


def record_of(client, run_id: str) -> RunRecord:
    import mlflow

    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ReproduceError(f"run {run_id} is not in the store: {error.message}") from None
    return RunRecord(run_id, dict(run.data.tags), dict(run.data.metrics))


def experiment_commit(root: Path, name: str, baseline: str) -> tuple[str, str]:
    """The experiment's ref and commit, pulled from the repo's git remotes when it is not here."""
    remotes = execute(["git", "remote"], root).stdout.split()
    for remote in [None, *remotes]:
        if remote:
            log.info(
                "experiment %s is not in this repository: dvc exp pull %s %s", name, remote, name
            )
            execute(["dvc", "exp", "pull", "--no-cache", remote, name], root, check=False)
        listed = ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/"]
        refs = [line.split() for line in execute(listed, root).stdout.splitlines()]
        found = [(ref, commit) for ref, commit in refs if ref.endswith(f"/{name}")]
        if found:
            return found[0]
    where = f"nor on its git remotes ({', '.join(remotes)})" if remotes else "(no git remote)"
    raise ReproduceError(
        f"experiment {name} (baseline {baseline[:7]}) is neither in this repository {where}: "
        f"push it from the clone that ran it (dvc exp push origin {name})"
    )


def source_of(root: Path, original: RunRecord) -> tuple[str, str, bool]:
    """The revision to check out, from the run's lineage tags; how to say it; and whether
    params.yaml is to be rebuilt from the run's params.json."""
    tags, commit = original.tags, original.tags.get("git_commit")
    if not commit:
        raise ReproduceError(
            f"run {original.run_id} has no lineage tags (git_commit): it was "
            "made outside a git repository or by older code; retrain it"
        )
    if name := tags.get("dvc.exp_name"):
        ref, revision = experiment_commit(root, name, tags.get("dvc.baseline_rev", ""))
        return revision, f"experiment {name} ({ref})", False
    exists = execute(["git", "cat-file", "-e", f"{commit}^{{commit}}"], root, check=False)
    if exists.returncode != 0:
        raise ReproduceError(
            f"commit {commit[:12]} of run {original.run_id} is not in this "
            "repository: git fetch it from the clone that made the run"
        )
    dirty = tags.get("git.dirty") == "true"
    return (
        commit,
        f"commit {commit[:12]}" + (", params as the run logged them" if dirty else ""),
        dirty,
    )


@contextlib.contextmanager
def worktree(root: Path, revision: str) -> Iterator[Path]:
    """A detached git worktree of `revision` in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="reproduce-", ignore_cleanup_errors=True) as folder:
        source = Path(folder) / "src"
        try:
            execute(["git", "worktree", "add", "--detach", "--quiet", str(source), revision], root)
            yield source
        finally:
            execute(["git", "worktree", "remove", "--force", str(source)], root, check=False)
            execute(["git", "worktree", "prune"], root, check=False)


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
    rebuilt = yaml.safe_load(path.read_text()) | stage_params
    path.write_text(yaml.safe_dump(rebuilt, sort_keys=False))


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
            modify = ["dvc", "remote", "modify", "--local", name, "url", settings["url"]]
            execute(modify, source, env)


def restore_data(source: Path, env: dict[str, str], original: RunRecord) -> None:
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


def data_differences(source: Path, paths: dict, original: RunRecord) -> list[str]:
    lines = []
    for split in ("train", "val"):
        recorded = original.tags.get(f"data.{split}_sha256")
        digest = sha256_file(source / paths[f"{split}_split"])
        if recorded and recorded != digest:
            lines.append(f"data.{split}_sha256: {recorded[:12]} → {digest[:12]}")
    return lines


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
    store = env["MLFLOW_TRACKING_URI"]
    about = f"the lines marked {SCRATCH_MARK.strip()} are about it, and its registry, not yours"
    log.info("train and evaluate run against a scratch store (%s): %s", store, about)
    for name in ("train", "evaluate"):
        args = shlex.split(stages[name]["cmd"])
        if args[0] in ("python", "python3"):
            args[0] = sys.executable
        log.info("reproduction: %s", " ".join(args))
        code = relayed(args, source, env)
        if code != 0:
            raise ReproduceError(f"the revision's {name} stage failed (exit {code}); see above")


def reproduce(root: Path, client, original: RunRecord) -> Reproduction:
    """Rebuild the run in a worktree against a scratch store; judge the result."""
    revision, description, logged_params = source_of(root, original)
    log.info("reproducing run %s from %s", original.run_id, description)
    with worktree(root, revision) as source:
        scrubbed = processes.environment_without(*SCRUBBED_PREFIXES)
        env = processes.tools_environment(scrubbed) | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{source.parent / 'mlflow.db'}",
            "PYTHONPATH": str(source),  # the revision's package, not the one installed here
            "DVC_NO_ANALYTICS": "1",
        }
        if logged_params:
            restore_params(source, client, original.run_id)
        attach_dvc(root, source, env)
        restore_data(source, env, original)
        paths = yaml.safe_load((source / config.PARAMS_FILE).read_text())["paths"]
        data = data_differences(source, paths, original)
        run_stages(source, env)
        run_id = json.loads((source / paths["run_info"]).read_text())["run_id"]
        again = record_of(tracking.client_for(env["MLFLOW_TRACKING_URI"]), run_id)
    judged = compare(original, again)
    notes = [f"from {description}"] + data
    changed = original.tags.get("git.changed_files", "").split(",")
    code = [name for name in changed if name and name != config.PARAMS_FILE]
    if logged_params and code:
        notes.append(
            f"uncommitted changes to {', '.join(code)} were not recorded: rebuilt as committed"
        )
    return Reproduction(judged.kind, judged.differences + notes)


def run(params: config.Params, model: str | None, run_id: str | None) -> Reproduction:
    """Reproduce the run and tag it, so the registry shows which versions were checked and how."""
    import mlflow

    root = tracking.repo_root()
    tracking.connect(params.mlflow, root)
    client = mlflow.MlflowClient()
    target = run_id_of(client, model, run_id, params.mlflow.registered_model)
    judged = reproduce(root, client, record_of(client, target))
    client.set_tag(target, f"{TAG_PREFIX}verdict", judged.kind)
    client.set_tag(target, f"{TAG_PREFIX}date", datetime.datetime.now(datetime.UTC).isoformat())
    client.set_tag(target, f"{TAG_PREFIX}details", "; ".join(judged.differences)[:5000] or "-")
    store = tracking.tracking_uri(params.mlflow, root)
    kept = f"only the verdict's {TAG_PREFIX}* tags on run {target}"
    log.info("the scratch store is removed; %s got no run and no version, %s", store, kept)
    log.info("run %s: %s", target, judged.kind)
    for line in judged.differences:
        log.info("  %s", line)
    return judged


def compare(original: RunRecord, again: RunRecord) -> Reproduction:
    """Compare a reproduction with the run it rebuilt."""
    before, after = (
        {key: value for key, value in record.metrics.items() if key.startswith("test_")}
        for record in (original, again)
    )
    differences = [
        f"{key}: {before[key]!r} → {after[key]!r}"
        if key in after
        else f"{key}: only in the original run"
        for key in sorted(before)
        if before[key] != after.get(key)
    ]
    weights = original.tags.get(lineage.WEIGHTS_TAG)
    same_weights = weights is not None and weights == again.tags.get(lineage.WEIGHTS_TAG)
    if same_weights and not differences:
        return Reproduction(BIT_IDENTICAL)
    shaping = [
        {key: value for key, value in record.tags.items() if key.startswith(SHAPING_PREFIXES)}
        for record in (original, again)
    ]
    differences += [
        f"{key}: {shaping[0].get(key, 'not recorded')} → {shaping[1].get(key, 'not recorded')}"
        for key in sorted(shaping[0].keys() | shaping[1].keys())
        if shaping[0].get(key) != shaping[1].get(key)
    ]
    if weights is None:
        differences.append(
            f"the original run recorded no {lineage.WEIGHTS_TAG}: weights not compared"
        )
    elif not same_weights:
        differences.append("weights: other bytes")
    close = all(
        key in original.metrics
        and key in again.metrics
        and abs(original.metrics[key] - again.metrics[key]) <= tolerance
        for key, tolerance in (("test_accuracy", ACCURACY_TOLERANCE), ("test_loss", LOSS_TOLERANCE))
    )
    return Reproduction(WITHIN_TOLERANCE if close else NOT_REPRODUCED, differences)


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
