"""MNIST read row by row by an LSTM, as a DVC pipeline tracked in MLflow."""

import importlib.util
import os
import sys

# TensorFlow reads this once, when first imported: keep its C++ start-up chatter (CPU feature
# notes, oneDNN hints) out of `dvc repro` output. Set it yourself to see them again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# What every command of the project imports; the first one missing is named.
REQUIRED_MODULES = ("mlflow", "pydantic", "yaml", "numpy")


def check_interpreter() -> None:
    """Exit with one line when this Python lacks the project's packages (no import: microseconds).

    `.venv/bin/dvc repro` runs each stage with the first `python` on PATH, which may lack them.
    """
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"error: this Python ({sys.executable}) lacks the project's packages (no module "
            f"{missing[0]}): run from the project's venv: source .venv/bin/activate"
        )


# While `python -m pipeline.<module>` imports this package, before the module itself, argv[0] is
# "-m" (the module's path once found): only a command of the project is checked, never an
# import (a test run, a server's worker processes, a notebook).
if sys.argv[:1] == ["-m"]:
    check_interpreter()
