"""`make bench`: what users run, timed on this machine, section by section.

A section is a module of benchmarks/: `measure()` returns its figures, `table(figures)` its
Markdown. RESULTS.json keeps each section's figures with when and where they were measured."""

import argparse
import json
import os
import platform
import time

from benchmarks import overhead, pictures, repro, serving, stage_cost, sweeps, training, tuning
from benchmarks.scratch import REPO
from pipeline.tracking.lineage import cpu_description

MODULES = (training, stage_cost, repro, serving, pictures, overhead, sweeps, tuning)
SECTIONS = {module.__name__.rpartition(".")[2]: module for module in MODULES}
RESULTS = REPO / "benchmarks" / "RESULTS.md"
INTRO = ("Written by `make bench` (benchmarks/bench.py), each section in one run on the machine "
         "it names: compare within a section.")  # fmt: skip


def machine() -> dict[str, str]:
    """This machine and the versions that set the pace."""
    import keras
    import tensorflow as tf
    import torch

    cpu, flags = cpu_description()
    vector = [name for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"),
                                      ("avx2", "AVX2")) if flag in flags.split()]  # fmt: skip
    return {"cpu": cpu, "instruction sets": ", ".join(vector) or "none of AMX, AVX-512, AVX2",
            "cores": str(os.cpu_count()), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads())}  # fmt: skip


def described(host: dict[str, str]) -> str:
    return (f"{host['cpu']} ({host['instruction sets']}), {host['cores']} cores; Python "
            f"{host['python']}, TensorFlow {host['tensorflow']}, Keras {host['keras']}, PyTorch "
            f"{host['torch']} ({host['torch threads']} threads)")  # fmt: skip


def section_text(name: str, record: dict) -> list[str]:
    """A section's heading, when and where it was measured, the rest of its Markdown."""
    heading, *rest = SECTIONS[name].table(record["figures"])
    stamp = f"Measured {record['measured']} on {described(record['machine'])}."
    return [heading, "", stamp, *rest, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"measure only these of {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md from RESULTS.json, measuring nothing")  # fmt: skip
    args = parser.parse_args(argv)
    saved = RESULTS.with_suffix(".json")
    results = json.loads(saved.read_text()) if saved.exists() else {}
    measured = [] if args.report_only else args.only or list(SECTIONS)
    host = machine() if measured else {}
    if measured:
        print(f"make bench on {described(host)}", flush=True)  # noqa: T201
    for name in measured:
        print(name.replace("_", " "), flush=True)  # noqa: T201
        results[name] = {"measured": time.strftime("%Y-%m-%d %H:%M"), "machine": host,
                         "figures": SECTIONS[name].measure()}  # fmt: skip
        saved.write_text(json.dumps(results, indent=2) + "\n")  # a failure later keeps these
    lines = ["# Benchmark results", "", INTRO, ""]
    for name in SECTIONS:
        lines += section_text(name, results[name]) if name in results else []
    RESULTS.write_text("\n".join(lines))
    for name in measured:
        print("\n".join(section_text(name, results[name])))  # noqa: T201


if __name__ == "__main__":
    main()
