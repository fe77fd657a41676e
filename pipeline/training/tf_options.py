"""TensorFlow's start-up options, set before it loads; nothing here imports TensorFlow."""

from __future__ import annotations

import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def use_onednn(enabled: bool) -> None:
    """TensorFlow's oneDNN kernels on or off; TensorFlow reads this once, when it loads."""
    os.environ[ONEDNN_ENV] = "1" if enabled else "0"


def without_unused_libraries() -> None:
    """Keep Keras from importing scikit-learn, matplotlib and pandas in this process.

    `import keras` imports each of them whenever it is installed (MLflow requires all three):
    scikit-learn (with SciPy's stats and joblib) for its scikit-learn wrappers, matplotlib's
    pyplot for its image-gallery helpers, pandas so that its array adapters take DataFrames.
    Training calls none of that: it feeds numpy arrays, and the train stage's figures and
    tables are made in other processes (pipeline/reports/drawing.py, the stage itself). Together
    they are more than a second of every training's start-up. A `None` entry in `sys.modules`
    makes their import raise ImportError (the import system's documented way to block a
    module), which Keras already expects of each when it is absent. Call it before TensorFlow
    loads, only in a process that needs none of them.
    """
    for name in ("sklearn", "matplotlib", "pandas"):
        if name not in sys.modules:
            sys.modules[name] = None
