"""A scratch copy of this repo for benchmarks: tracked files, local data, its own MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.runtime.processes import environment_without

REPO = Path(__file__).resolve().parents[1]


def scratch_repo(prefix: str) -> tuple[Path, dict[str, str]]:
    """Copy the tracked files; read the data `make repro` fetched as the first source.

    Returns the folder and the environment to run `dvc` and the stages in there.
    """
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for name in files:
        if (REPO / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, scratch / name)
    params = (scratch / "params.yaml").read_text()
    mirror = REPO / "data/raw/mnist.npz"  # "from cached data": the fetched file, locally
    params = params.replace(
        "    - kind: url", f"    - kind: local\n      path: {mirror}\n    - kind: url", 1
    )
    (scratch / "params.yaml").write_text(params)
    env = environment_without("MLFLOW_", "DVC_")
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@localhost",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@localhost"}  # fmt: skip
    for command in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"]):
        subprocess.run(command, cwd=scratch, check=True, env=env, capture_output=True)
    return scratch, env
