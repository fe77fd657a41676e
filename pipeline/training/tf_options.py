"""TensorFlow's start-up options, set before it loads; nothing here imports TensorFlow."""

from __future__ import annotations

import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def use_onednn(enabled: bool) -> None:
    """TensorFlow's oneDNN kernels on or off; TensorFlow reads this once, when it loads."""
    os.environ[ONEDNN_ENV] = "1" if enabled else "0"


def without_unused_libraries() -> None:
    """Keep Keras from importing scikit-learn and matplotlib in this process.

    `import keras` imports scikit-learn (and with it SciPy's stats and joblib) for its
    scikit-learn wrappers whenever it is installed, and MLflow requires it: about 1.5 s of
    every training's start-up, for code that training never calls. It imports matplotlib's
    pyplot for its image-gallery helpers too, which training never calls either (the train
    stage's figures are drawn by a process of their own, pipeline/reports/drawing.py). A `None`
    entry in `sys.modules` makes `import sklearn` raise ImportError (the import system's
    documented way to block a module), which Keras's wrappers already expect when scikit-learn
    is absent, as its gallery helpers expect of matplotlib. Call it before TensorFlow loads,
    only in a process that needs neither.
    """
    for name in ("sklearn", "matplotlib"):
        if name not in sys.modules:
            sys.modules[name] = None
