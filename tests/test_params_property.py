"""Property: any wrong value for any key is refused with one line naming it, by the loader every
stage runs first (`runtime.cli.run_stage`: one code path, so the stages are not each sampled;
tests/test_config.py runs each stage's command once) and by the tools'."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.params import config, tools

from .support import REPO, with_value

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())
LOADERS = {"stage": lambda path: config.load_params_from_cli(["--params", str(path)]),
           "tools": tools.load_params_or_exit}  # fmt: skip


def loader_for(key: str) -> str:
    """Who must refuse a wrong `key`: a stage, or for a tools' section the tools."""
    return "tools" if key.split(".")[0] in config.TOOL_SECTIONS else "stage"


junk = st.one_of(
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), min_size=1, max_size=1),
)
words = st.text(alphabet="abcxyz_ -", min_size=1, max_size=10)
not_an_int = st.one_of(junk, st.booleans(), words, st.floats(0.1, 0.9).map(lambda f: 3 + f))
not_a_number = st.one_of(junk, st.booleans(), words)
too_small = st.integers(max_value=0)
not_a_flag = st.one_of(junk, words, st.integers(0, 1))  # not a boolean
not_a_name = st.one_of(junk, st.just(""), st.integers())  # not a name
not_a_text = st.one_of(junk, st.just(""))  # not a non-empty text
not_a_port = st.one_of(not_an_int, too_small, st.integers(min_value=65536))
not_a_fraction = st.one_of(not_a_number, st.floats(max_value=-0.01), st.floats(1.01, 9))

# The keys of one kind: names, booleans (model.unroll: or auto), non-empty texts, ports.
NAMES = ("data.name", "mlflow.experiment", "mlflow.registered_model", "serve.host",
         "tune.study", "team.host")  # fmt: skip
FLAGS = ("model.unroll", "train.deterministic", "train.onednn", "mlflow.system_metrics",
         "monitor.log", "monitor.log_pixels")  # fmt: skip
TEXTS = ("mlflow.tracking_db", "mlflow.artifacts_dir", "monitor.log_path", "monitor.report_dir",
         "tune.journal", "tune.metric", "report.output_dir", "team.state_dir")  # fmt: skip
PORTS = ("serve.port", "serve.demo_port", "team.port", "team.postgres_port")


def odd_tens(number: int) -> bool:
    """Not a multiple of the default train.steps_per_execution (10)."""
    return number % 10 != 0


INVALID = {
    "seed": st.one_of(not_an_int, st.integers(max_value=-1), st.integers(min_value=2**32)),
    "data.validation_size": st.one_of(not_an_int, too_small),
    "data.download_timeout": st.one_of(not_a_number, st.floats(max_value=0), st.floats(3601, 1e9)),
    "data.sources": st.one_of(
        st.none(),
        st.just([]),
        words,
        st.just([{"kind": "ftp", "url": "ftp://x"}]),
        st.just([{"kind": "url", "url": "https://x/m.npz"}]),  # no sha256
        st.just([{"kind": "local"}]),
        st.just([{"kind": "local", "path": "/x", "extra": 1}]),
    ),  # fmt: skip
    **{
        f"data.sha256.{split}": st.one_of(junk, words, st.just("ABC" * 21 + "D"))
        for split in ("x_train", "y_train", "x_test", "y_test")
    },
    "data.class_names": st.one_of(
        st.none(),
        words,
        st.lists(words, min_size=0, max_size=9, unique=True),  # fewer names than classes
        st.lists(words, min_size=11, max_size=12, unique=True),  # more
        st.just(["0", "1", "2", "3", "4", "5", "6", "7", "8", "8"]),  # a repeated name
        st.just([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),  # not text
    ),
    "model.time_steps": st.one_of(
        not_an_int, too_small, st.integers(785, 10**6), st.sampled_from([1, 7, 14, 56])
    ),  # fmt: skip
    "model.n_input": st.one_of(not_an_int, too_small, st.sampled_from([1, 4, 56, 784])),
    "model.num_units": st.one_of(not_an_int, too_small, st.integers(min_value=4097)),
    "model.forget_bias": st.one_of(not_a_number, st.floats(100.5, 1e9), st.floats(-1e9, -100.5)),
    "model.n_classes": st.one_of(not_an_int, st.integers(max_value=1), st.integers(min_value=257)),
    "train.learning_rate": st.one_of(not_a_number, st.floats(max_value=0), st.floats(1.01, 1e9)),
    "train.batch_size": st.one_of(not_an_int, too_small, st.integers(min_value=65537)),
    # not multiples of steps_per_execution (10)
    "train.iterations": st.one_of(not_an_int, too_small, st.integers(1, 10**6).filter(odd_tens)),
    "train.log_every": st.one_of(not_an_int, too_small, st.integers(1, 10**6).filter(odd_tens)),
    "train.steps_per_execution": st.one_of(  # must divide iterations (2000) and log_every (100)
        not_an_int, too_small, st.sampled_from([3, 7, 30, 200, 4000])
    ),  # fmt: skip
    "train.batch_shards": st.one_of(  # must divide batch_size (128)
        not_an_int, too_small, st.integers(65, 10**6), st.sampled_from([3, 5, 6, 7, 48])
    ),  # fmt: skip
    "train.intra_op_threads": st.one_of(not_an_int, st.integers(max_value=-1), st.integers(1025)),
    "train.inter_op_threads": st.one_of(not_an_int, st.integers(max_value=-1), st.integers(1025)),
    "train.distribution": st.one_of(
        junk,
        st.booleans(),
        st.integers(),
        st.sampled_from(["", "None", "multi-worker", "mirrored"]),
    ),  # fmt: skip
    **{
        f"evaluate.{key}": not_a_fraction
        for key in ("min_test_accuracy", "min_class_f1", "min_shift_agreement", "max_noise_drop")
    },
    "evaluate.min_gain": st.one_of(not_a_number, st.floats(max_value=0), st.floats(1.01, 9)),
    "evaluate.noise_sigma": st.one_of(not_a_number, st.floats(max_value=0), st.floats(1.01, 9)),
    "evaluate.behaviour_images": st.one_of(not_an_int, too_small),
    "evaluate.max_shift": st.one_of(not_an_int, too_small, st.integers(min_value=9)),
    "serve.max_body_bytes": st.one_of(not_an_int, st.integers(max_value=1023)),
    "mlflow.registration": st.one_of(junk, words, st.just("")),
    "serve.max_image_pixels": st.one_of(not_an_int, st.integers(max_value=783)),
    "serve.workers": st.one_of(not_an_int, too_small, st.integers(min_value=65)),
    "serve.batch_wait_ms": st.one_of(
        not_a_number, st.floats(max_value=-0.01), st.floats(1001, 9e9)
    ),
    "serve.max_batch": st.one_of(not_an_int, too_small, st.integers(min_value=100_001)),
    "serve.follow_seconds": st.one_of(
        not_a_number, st.floats(max_value=-0.01), st.floats(86_401, 9e9)
    ),
    "serve.max_pending": st.one_of(not_an_int, too_small, st.integers(min_value=100_001)),
    "monitor.log_max_bytes": st.one_of(not_an_int, st.integers(max_value=65535)),
    "paths.monitor_reference": st.one_of(junk, st.just(""), st.just("reports/reference.json")),
    "monitor.window": st.one_of(junk, st.just(""), st.sampled_from(["0h", "1 day", "24"])),
    "monitor.min_predictions": st.one_of(not_an_int, st.integers(max_value=1)),
    "monitor.alpha": st.one_of(not_a_number, st.floats(max_value=0), st.floats(1, 1e9)),
    "monitor.min_distance": st.one_of(
        not_a_number, st.floats(max_value=-0.01), st.floats(1.01, 1e9)
    ),
    "tune.storage": junk,
    "tune.direction": st.one_of(junk, words),
    "tune.trials": st.one_of(not_an_int, too_small),
    "tune.space": st.one_of(  # a whole mapping: its keys are dotted param names themselves
        st.none(),
        st.just({}),
        words,
        st.just({"train.no_such_param": {"kind": "float", "low": 0.1, "high": 1.0}}),
        st.just({"train.learning_rate": {"kind": "normal", "low": 0.1, "high": 1.0}}),
        st.just({"train.learning_rate": {"kind": "float", "low": 1.0, "high": 0.1}}),
        st.just({"model.num_units": {"kind": "choice", "choices": []}}),
    ),
    "team.workers": st.one_of(not_an_int, st.integers(max_value=0)),
    **{f"paths.{key}": not_a_text for key in DEFAULTS["paths"]},
    **dict.fromkeys(NAMES, not_a_name),
    **dict.fromkeys(FLAGS, not_a_flag),
    **dict.fromkeys(TEXTS, not_a_text),
    **dict.fromkeys(PORTS, not_a_port),
    "paths.raw_data": st.one_of(junk, st.just(""), st.just("data/raw/mnist.csv")),
    "paths.raw_manifest": st.one_of(junk, st.just(""), st.just("data/raw/manifest.yaml")),
    **{
        f"paths.{split}_split": st.one_of(junk, st.just(""), st.just(f"data/{split}.npy"))
        for split in ("train", "val", "test")
    },
    "paths.model": st.one_of(junk, st.just(""), st.just("models/model.h5")),
    "paths.onnx_model": st.one_of(junk, st.just(""), st.just("models/model.keras")),
    "paths.model_card": st.one_of(junk, st.just(""), st.just("reports/card.txt")),
}
SECTIONS = ["data", "model", "train", "mlflow", "evaluate", "serve", "monitor", "team", "tune",
            "report", "paths"]  # fmt: skip


def written(raw: dict, folder: Path) -> Path:
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.dump(raw, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    return params_file


def assert_stopped_with_one_line(raw: dict, folder: Path, loader: str, names: list[str]) -> None:
    """The loader exits non-zero with one `error:` line naming the key."""
    params_file = written(raw, folder)
    with pytest.raises(SystemExit) as stop:
        LOADERS[loader](params_file)
    message = str(stop.value.code)
    assert stop.value.code not in (0, None)
    assert message.startswith(f"error: {params_file}: ") and "\n" not in message
    assert any(name in message for name in names), (names, message)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(sorted(INVALID)), data=st.data())
def test_any_wrong_value_for_any_key_is_refused(tmp_path, key, data):
    raw = with_value(DEFAULTS, key, data.draw(INVALID[key], label="value"))
    assert_stopped_with_one_line(raw, tmp_path, loader_for(key), [key, key.split(".")[-1]])


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_keys_are_refused(tmp_path, section):
    raw = copy.deepcopy(DEFAULTS)
    raw[section]["no_such_key"] = 1
    names = [f"{section}.no_such_key: unknown key"]
    assert_stopped_with_one_line(raw, tmp_path, loader_for(section), names)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_missing_keys_are_refused(tmp_path, data):
    raw = copy.deepcopy(DEFAULTS)
    section = data.draw(st.sampled_from(SECTIONS))
    name = data.draw(st.sampled_from(sorted(raw[section])))
    del raw[section][name]
    names = [f"{section}.{name}: missing"]
    assert_stopped_with_one_line(raw, tmp_path, loader_for(section), names)


TOOL_KEYS = sorted(key for key in INVALID if key.split(".")[0] in config.TOOL_SECTIONS)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(TOOL_KEYS), data=st.data())
def test_a_stage_reads_past_a_wrong_value_in_a_tools_section(tmp_path, key, data):
    raw = with_value(DEFAULTS, key, data.draw(INVALID[key], label="value"))
    params = LOADERS["stage"](written(raw, tmp_path))
    assert params.train == config.load_params(REPO / "params.yaml").train


def test_every_leaf_key_has_a_wrong_value_strategy():
    def leaves(mapping: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in mapping.items():
            if isinstance(value, dict) and f"{prefix}{key}" != "tune.space":
                found |= leaves(value, f"{prefix}{key}.")
            else:
                found.add(f"{prefix}{key}")
        return found

    assert leaves(DEFAULTS) <= set(INVALID)
