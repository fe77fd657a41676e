"""The tools' settings in params.yaml (serve, monitor, team, tune, report); no stage reads them.

`ToolParams` holds the stages' `Params` too: a tool reads `params.mlflow` and `params.serve` alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

import pipeline.params.config as config
from pipeline.params.config import IMAGE_PIXELS, PARAMS_FILE, Float, Int, Name, Params, Section

# A span of time back from now: a count and a unit (minutes, hours, days, weeks): 90m, 24h, 7d.
Duration = Annotated[str, Field(pattern=r"^[1-9][0-9]*[mhdw]$")]


class MonitorParams(Section):
    """The servers' prediction log and `make monitor`'s tests of it; no stage reads these."""

    log: StrictBool  # record each scored image
    log_path: Name  # SQLite, git- and DVC-ignored
    log_max_bytes: Annotated[Int, Field(ge=65536, le=2**40)]  # past it, the oldest rows go
    log_pixels: StrictBool  # keep each image's pixels in the log too
    window: Duration  # how far back `make monitor` looks unless told (--since)
    min_predictions: Annotated[Int, Field(ge=2)]  # fewer in the window: no verdict
    alpha: Annotated[Float, Field(gt=0, lt=1)]  # a test's p-value below it: not chance
    min_distance: Annotated[Float, Field(ge=0, le=1)]  # and its distance from it on: it moved
    report_dir: Name  # make monitor's report and figure


class ServeParams(Section):
    """`make serve` (REST) and `make demo` (the draw-a-digit page); no stage reads these."""

    host: Name
    port: Annotated[Int, Field(ge=1, le=65535)]
    demo_port: Annotated[Int, Field(ge=1, le=65535)]
    max_body_bytes: Annotated[Int, Field(ge=1024, le=2**31)]
    max_image_pixels: Annotated[Int, Field(ge=IMAGE_PIXELS, le=2**31)]  # width × height, read
    workers: Annotated[Int, Field(ge=1, le=64)]  # server processes on the one port
    batch_wait_ms: Annotated[Float, Field(ge=0, le=1000)]  # how long a batch waits for more
    max_batch: Annotated[Int, Field(ge=1, le=100_000)]  # images scored in one call, about
    max_pending: Annotated[Int, Field(ge=1, le=100_000)]  # requests admitted; past it: 503
    follow_seconds: Annotated[Float, Field(ge=0, le=86_400)]  # an alias checked; 0: never


class TeamParams(Section):
    """`make server` and `make server-stop`: the team's tracking server; no stage reads these."""

    host: Name
    port: Annotated[Int, Field(ge=1, le=65535)]
    workers: Annotated[Int, Field(ge=1, le=64)]
    postgres_port: Annotated[Int, Field(ge=1, le=65535)]
    state_dir: Name  # its own PostgreSQL cluster, proxied artifacts, logs and pid files


class FloatRange(Section):
    """A float drawn between low and high; `log: true` draws its logarithm uniformly."""

    kind: Literal["float"]
    low: Float
    high: Float
    log: StrictBool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError(
                f"needs low < high (and low > 0 with log), got {self.low}, {self.high}"
            )
        return self


class IntRange(Section):
    """An integer from low to high, both included, in steps of `step`."""

    kind: Literal["int"]
    low: Int
    high: Int
    step: Annotated[Int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low >= self.high:
            raise ValueError(f"needs low < high, got {self.low}, {self.high}")
        return self


class Choice(Section):
    """One of the listed values."""

    kind: Literal["choice"]
    choices: Annotated[list[Int | Float | StrictBool | Name], Field(min_length=1)]


Dimension = Annotated[FloatRange | IntRange | Choice, Field(discriminator="kind")]


class TuneParams(Section):
    """`make tune`: an Optuna search whose trials are DVC experiments; no stage reads these."""

    study: Name
    storage: str  # "" → the journal file `journal`; OPTUNA_STORAGE overrides either
    journal: Name  # the default storage: a file in the repo, git- and DVC-ignored
    metric: Name  # a metric of evaluate's, read from the trial's MLflow run
    direction: Literal["maximize", "minimize"]
    trials: Annotated[Int, Field(ge=1, le=100_000)]  # the study's budget, across all workers
    space: Annotated[dict[str, Dimension], Field(min_length=1)]  # params.yaml key → its range


class ReportParams(Section):
    """`make report`: a change reviewed against a base revision; no stage reads these."""

    output_dir: Name  # report.md and its images; git- and DVC-ignored


class ToolParams(Params):
    """Everything in params.yaml: the stages' params and the tools' settings."""

    serve: ServeParams
    monitor: MonitorParams
    team: TeamParams
    tune: TuneParams
    report: ReportParams

    @model_validator(mode="after")
    def _space_names_params(self) -> ToolParams:
        tunable = {
            f"{section}.{key}"
            for section in ("model", "train")
            for key in getattr(self, section).model_dump()
        }
        unknown = sorted(set(self.tune.space) - tunable)
        if unknown:
            raise ValueError(f"tune.space names no model or train param: {', '.join(unknown)}")
        return self


def parse_params(raw: object, source: str = PARAMS_FILE) -> ToolParams:
    """Every section of a params mapping, validated; ConfigError names every bad key."""
    return config.validated_params(ToolParams, raw, source)


def load_params(path: str | Path = PARAMS_FILE) -> ToolParams:
    """Read and validate the whole of params.yaml."""
    return parse_params(config.read_params_file(path), str(path))


def load_params_or_exit(path: str | Path) -> ToolParams:
    """load_params, exiting with one line on a bad file."""
    return config.load_params_or_exit(path, load_params)
