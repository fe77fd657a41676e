"""TensorFlow's start-up options, set before it loads; nothing here imports TensorFlow."""

from __future__ import annotations

import os

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def use_onednn(enabled: bool) -> None:
    """TensorFlow's oneDNN kernels on or off; TensorFlow reads this once, when it loads."""
    os.environ[ONEDNN_ENV] = "1" if enabled else "0"
