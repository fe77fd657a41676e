"""What a training run's result depends on beyond code, params and data: recorded as run tags.

A later reproduction (`make reproduce`) compares these with its own: the same weights on the
same machine and versions, or, when they differ, which package, CPU kind or thread setting
changed. Reading them costs microseconds; nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

WEIGHTS_TAG = "model.weights_sha256"
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


def weights_sha256(weights: Iterable[np.ndarray]) -> str:
    """One hash of a network's weight arrays, in order: equal hashes, bit-identical weights."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def package_version(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """The CPU's model name and its vector flags, from /proc/cpuinfo (else what Python says)."""
    try:
        text = cpuinfo.read_text()
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
