"""A scratch copy of this repo for benchmarks: tracked files, local data, its own MLflow store."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.support import REPO, copy_repo, environment


def scratch_repo(prefix: str) -> tuple[Path, dict[str, str]]:
    """Copy the tracked files; read the data `make repro` fetched as the first source.

    Returns the folder and the environment to run `dvc` and the stages in there.
    """
    scratch = copy_repo(Path(tempfile.mkdtemp(prefix=prefix)))
    params = (scratch / "params.yaml").read_text()
    mirror = REPO / "data/raw/mnist.npz"  # "from cached data": the fetched file, locally
    params = params.replace(
        "    - kind: url", f"    - kind: local\n      path: {mirror}\n    - kind: url", 1
    )
    (scratch / "params.yaml").write_text(params)
    env = environment()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"]):
        subprocess.run(command, cwd=scratch, check=True, env=env, capture_output=True)
    return scratch, env
