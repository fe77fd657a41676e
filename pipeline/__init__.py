"""MNIST read row by row by an LSTM, as a DVC pipeline tracked in MLflow."""

import os

# TensorFlow reads this once, when first imported: keep its C++ start-up chatter (CPU feature
# notes, oneDNN hints) out of `dvc repro` output. Set it yourself to see them again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
