"""Tags that say where a training run's result came from, for a person and `make reproduce`.

Its commit, DVC experiment, params and data (lineage_tags); packages and CPU (environment_tags);
the weights it gave (weights_sha256), for a bit-for-bit check; its name (run_name). No TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import pipeline.params.config as config

# A search's trials tag their runs with the study and trial number (pipeline/search/).
TRIAL_TAG_ENV = {"optuna.study": "PIPELINE_OPTUNA_STUDY", "optuna.trial": "PIPELINE_OPTUNA_TRIAL"}
# What a run's result depends on: a change here since the baseline commit marks it dirty.
INPUT_PATHS = ("params.yaml", "dvc.yaml", "pipeline", "pyproject.toml")
WEIGHTS_TAG = "model.weights_sha256"
# The run's validated stage params as one JSON artifact: `make reproduce` restores them as they
# were, types and all, where MLflow's logged params are strings.
PARAMS_ARTIFACT = "params.json"
# A `dvc repro` run's name lists this many changed params at most, each value cut to this length.
MAX_NAMED_CHANGES = 3
MAX_VALUE_CHARS = 20
REMOVED = "(removed)"  # a param that the workspace's params.yaml no longer has
ENV_PREFIX = "env."
# The distributions whose versions shape the weights or the scores (first found of each row).
PACKAGES = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime",),
    "tf2onnx": ("tf2onnx",),
    "project": ("mnist-lstm-pipeline",),
}
# The CPU flags that pick TensorFlow's and oneDNN's kernels (and so the order of float sums).
VECTOR_FLAGS = re.compile(r"^(sse4_[12]|avx\w*|fma|f16c|amx\w*)$")
CPUINFO = Path("/proc/cpuinfo")  # not psutil: it has no call for the CPU model name or flags


def flatten(values: dict[str, Any]) -> dict[str, str]:
    """Nested params → {"train.learning_rate": "0.001", ...}; lists become JSON."""
    import pandas as pd  # here: the training process imports this module, and never needs it

    row = pd.json_normalize(values, sep=".").iloc[0].to_dict()
    return {
        key: json.dumps(value) if isinstance(value, list) else str(value)
        for key, value in row.items()
    }


def stage_params(params: config.Params) -> dict[str, Any]:
    """The stages' validated params (not the tools') as JSON: what a run logs, hashes, restores."""
    return params.model_dump(mode="json", include=set(config.Params.model_fields))


def params_sha256(params: config.Params) -> str:
    """A stable hash of every validated stage param value."""
    values = stage_params(params)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def lineage_tags(data_hashes: dict[str, str], params: config.Params) -> dict[str, str]:
    """Tags that lead from a run back to its commit, DVC experiment, data and params."""
    tags = {f"data.{name}_sha256": digest for name, digest in data_hashes.items()}
    tags["params_sha256"] = params_sha256(params)
    commit = _git("rev-parse", "HEAD")
    if commit:
        # In `dvc exp run` HEAD is the experiment's baseline; its changes are uncommitted.
        changed = _git("diff", "--name-only", "HEAD", "--", *INPUT_PATHS) or ""
        tags |= {
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            "git.dirty": str(bool(changed)).lower(),
            "git.changed_files": ",".join(changed.split()),
        }
    # Set by `make tune` for each trial, and by DVC in `dvc exp run` (dvc/repo/experiments/queue).
    from_env = TRIAL_TAG_ENV | {"dvc.exp_name": "DVC_EXP_NAME"}
    tags |= {tag: os.environ[name] for tag, name in from_env.items() if os.environ.get(name)}
    baseline = os.environ.get("DVC_EXP_BASELINE_REV") or commit
    if baseline:
        tags["dvc.baseline_rev"] = baseline
    return tags


def params_changes(path: str = config.PARAMS_FILE) -> dict[str, str]:
    """The stage params the workspace changes from HEAD's, flattened ({} outside git)."""
    committed_text = _git("show", f"HEAD:./{path}")
    if committed_text is None:
        return {}
    try:
        workspace = config.read_params_file(path)
        committed = yaml.load(committed_text, Loader=config.SAFE_LOADER)
    except (config.ConfigError, yaml.YAMLError):
        return {}
    if not isinstance(workspace, dict) or not isinstance(committed, dict):
        return {}
    now, before = (flatten(config.stage_sections(raw)) for raw in (workspace, committed))
    changes = {key: value for key, value in now.items() if before.get(key) != value}
    return changes | {key: REMOVED for key in before if key not in now}


def describe_changes(changes: dict[str, str]) -> str:
    """`train.learning_rate=0.002 model.num_units=64 +2 more`: short, for the runs table."""
    named = [
        f"{key}={value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 1] + '…'}"
        for key, value in list(changes.items())[:MAX_NAMED_CHANGES]
    ]
    more = len(changes) - len(named)
    return " ".join(named + ([f"+{more} more"] if more else []))


def run_name(tags: dict[str, str]) -> str | None:
    """The run's name: the DVC experiment's, else `a94719f train.learning_rate=0.002` (the commit,
    the params changed since, `+uncommitted code`); None outside git: MLflow's random name."""
    if tags.get("dvc.exp_name"):
        return tags["dvc.exp_name"]
    commit = tags.get("git_commit")
    if not commit:
        return None
    parts = [commit[:7]]
    changed = [name for name in tags.get("git.changed_files", "").split(",") if name]
    if config.PARAMS_FILE in changed:
        parts.append(describe_changes(params_changes()))
    if any(name != config.PARAMS_FILE for name in changed):
        parts.append("+uncommitted code")
    return " ".join(part for part in parts if part)


def weights_sha256(weights: Iterable[np.ndarray]) -> str:
    """One hash of a network's weight arrays, in order: equal hashes, bit-identical weights."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def package_version(names: tuple[str, ...]) -> str:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "absent"


def cpu_description(cpuinfo: Path = CPUINFO) -> tuple[str, str]:
    """The first CPU's model name and vector flags, from Linux's cpuinfo (else Python's guess)."""
    try:
        text = cpuinfo.read_text().split("\n\n", 1)[0]  # the first CPU's block
    except OSError:
        return platform.processor() or platform.machine(), "unknown"
    fields = dict(re.findall(r"^(model name|cpu family|model|flags)\s*:\s*(.*)$", text, re.M))
    flags = sorted(flag for flag in fields.get("flags", "").split() if VECTOR_FLAGS.match(flag))
    name = fields.get("model name", platform.machine()).strip()
    if "cpu family" in fields:  # "AMD EPYC" alone names several kinds
        name += (
            f" (family {fields['cpu family'].strip()}, model {fields.get('model', '?').strip()})"
        )
    return name, " ".join(flags)


def environment_tags() -> dict[str, str]:
    """Python, package versions, CPU model and vector flags, as `env.*` run tags."""
    model, flags = cpu_description()
    tags = {f"{ENV_PREFIX}{key}": package_version(names) for key, names in PACKAGES.items()}
    return tags | {
        f"{ENV_PREFIX}python": platform.python_version(),
        f"{ENV_PREFIX}platform": platform.platform(),
        f"{ENV_PREFIX}cpu": model,
        f"{ENV_PREFIX}cpu_flags": flags,
    }
