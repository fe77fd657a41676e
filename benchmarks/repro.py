"""The pipeline around training: a full and a no-op `dvc repro`, each stage's start-up, the train
stage's peak memory."""

import statistics
import subprocess
import sys

from benchmarks import markdown
from benchmarks.scratch import run, scratch_repo

REPEATS = 3
STAGES = ("fetch", "preprocess", "train", "evaluate")
# The largest resident set of a child, from the kernel's accounting: no sampling to miss a peak.
PEAK_RSS = ("import resource,subprocess,sys; subprocess.run(sys.argv[1:],check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip


def measure() -> dict[str, object]:
    commands = {stage: ["-m", f"pipeline.{stage}", "--help"] for stage in STAGES}
    commands["import tensorflow"] = ["-c", "import tensorflow"]
    with scratch_repo("bench-repro-") as (scratch, env):
        full = run(["dvc", "repro"], scratch, env)
        noop = [run(["dvc", "repro"], scratch, env) for _ in range(REPEATS)]
        startup = {name: statistics.median(run([sys.executable, *command], scratch, env)
                                           for _ in range(REPEATS))
                   for name, command in commands.items()}  # fmt: skip
        peak = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m",
                               "pipeline.train"], cwd=scratch, env=env, check=True,
                              capture_output=True, text=True)  # fmt: skip
    peak_mib = int(peak.stdout.strip().splitlines()[-1]) / 1024
    return {"full": full, "noop": noop, "startup": startup, "train_peak_rss_mib": peak_mib}


def table(pipe: dict) -> list[str]:
    noop = pipe["noop"]
    rows = [["full `dvc repro` (data from a local copy)", f"{pipe['full']:.1f}"],
            [f"no-op `dvc repro` (median of {len(noop)})",
             f"best {min(noop):.2f}, {statistics.median(noop):.2f} median"]]  # fmt: skip
    rows += [[f"start-up: `{f'python -m pipeline.{name} --help' if name in STAGES else name}`",
              f"{seconds:.2f}"] for name, seconds in pipe["startup"].items()]  # fmt: skip
    rows.append(["train stage peak RSS", f"{pipe['train_peak_rss_mib']:,.0f} MiB"])
    return ["## The pipeline around training", "", *markdown.table(["what", "seconds"], rows)]
