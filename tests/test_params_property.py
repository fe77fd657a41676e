"""Every key's wrong values are refused in one line naming it, by the stages' and tools' loaders."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.params import config, tools

from .support import REPO, with_value

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())
LOADERS = {"stage": lambda path: config.load_params_from_cli(["--params", str(path)]),
           "tools": tools.load_params_or_exit}  # fmt: skip

# Wrong values by kind; the table below adds each key's own bounds and rules.
JUNK = [None, [1, 2], {"a": 1}]
NOT_A_NUMBER = [*JUNK, True, "abc", "x y-"]
NOT_AN_INT = [*NOT_A_NUMBER, 3.5]
NOT_A_FLAG = [*JUNK, "abc", 0, 1]
NOT_A_NAME = [*JUNK, "", 7]
NOT_A_TEXT = [*JUNK, ""]
NOT_A_PORT = [*NOT_AN_INT, 0, 65536]
NOT_A_FRACTION = [*NOT_A_NUMBER, -0.01, 1.01]
NAMES = ("data.name", "mlflow.experiment", "mlflow.registered_model", "serve.host",
         "tune.study", "team.host")  # fmt: skip
FLAGS = ("model.unroll", "train.deterministic", "train.onednn", "mlflow.system_metrics",
         "monitor.log", "monitor.log_pixels")  # fmt: skip
TEXTS = ("mlflow.tracking_db", "mlflow.artifacts_dir", "monitor.log_path", "monitor.report_dir",
         "tune.journal", "tune.metric", "report.output_dir", "team.state_dir")  # fmt: skip
PORTS = ("serve.port", "serve.demo_port", "team.port", "team.postgres_port")
SPLITS = ("x_train", "y_train", "x_test", "y_test")
FLOAT_RANGE = {"min_test_accuracy", "min_class_f1", "min_shift_agreement", "max_noise_drop"}

INVALID = {
    "seed": [*NOT_AN_INT, -1, 2**32],
    "data.validation_size": [*NOT_AN_INT, 0],
    "data.download_timeout": [*NOT_A_NUMBER, 0, 3601],
    "data.sources": [None, [], "abc", [{"kind": "ftp", "url": "ftp://x"}],
                     [{"kind": "url", "url": "https://x/m.npz"}],  # no sha256
                     [{"kind": "local"}], [{"kind": "local", "path": "/x", "extra": 1}]],
    **{f"data.sha256.{split}": [*JUNK, "abc", "ABC" * 21 + "D"] for split in SPLITS},
    "data.class_names": [None, "abc", list("abcdefghi"), list("abcdefghijk"),  # 9, 11 names
                         [*"012345678", "8"], list(range(10))],  # a name twice; not text
    "model.time_steps": [*NOT_AN_INT, 0, 785, 1, 7, 14, 56],  # × n_input (28) must be 784
    "model.n_input": [*NOT_AN_INT, 0, 1, 4, 56, 784],
    "model.num_units": [*NOT_AN_INT, 0, 4097],
    "model.forget_bias": [*NOT_A_NUMBER, 100.5, -100.5],
    "model.n_classes": [*NOT_AN_INT, 1, 257],
    "train.learning_rate": [*NOT_A_NUMBER, 0, 1.01],
    "train.batch_size": [*NOT_AN_INT, 0, 65537],
    # not multiples of steps_per_execution (10), which must divide 2000 and 100
    "train.iterations": [*NOT_AN_INT, 0, 2005],
    "train.log_every": [*NOT_AN_INT, 0, 15],
    "train.steps_per_execution": [*NOT_AN_INT, 0, 3, 7, 30, 200, 4000],
    "train.batch_shards": [*NOT_AN_INT, 0, 65, 3, 5, 6, 7, 48],  # must divide batch_size (128)
    "train.intra_op_threads": [*NOT_AN_INT, -1, 1025],
    "train.inter_op_threads": [*NOT_AN_INT, -1, 1025],
    "train.distribution": [*JUNK, True, 1, "", "None", "multi-worker", "mirrored"],
    **{f"evaluate.{key}": NOT_A_FRACTION for key in FLOAT_RANGE},
    "evaluate.min_gain": [*NOT_A_NUMBER, 0, 1.01],
    "evaluate.noise_sigma": [*NOT_A_NUMBER, 0, 1.01],
    "evaluate.behaviour_images": [*NOT_AN_INT, 0],
    "evaluate.max_shift": [*NOT_AN_INT, 0, 9],
    "mlflow.registration": [*JUNK, "abc", ""],
    "serve.max_body_bytes": [*NOT_AN_INT, 1023],
    "serve.max_image_pixels": [*NOT_AN_INT, 783],
    "serve.workers": [*NOT_AN_INT, 0, 65],
    "serve.batch_wait_ms": [*NOT_A_NUMBER, -0.01, 1001],
    "serve.max_batch": [*NOT_AN_INT, 0, 100_001],
    "serve.follow_seconds": [*NOT_A_NUMBER, -0.01, 86_401],
    "serve.max_pending": [*NOT_AN_INT, 0, 100_001],
    "monitor.log_max_bytes": [*NOT_AN_INT, 65535],
    "monitor.window": [*JUNK, "", "0h", "1 day", "24"],
    "monitor.min_predictions": [*NOT_AN_INT, 1],
    "monitor.alpha": [*NOT_A_NUMBER, 0, 1],
    "monitor.min_distance": [*NOT_A_NUMBER, -0.01, 1.01],
    "tune.storage": JUNK,
    "tune.direction": [*JUNK, "abc"],
    "tune.trials": [*NOT_AN_INT, 0],
    "tune.space": [None, {}, "abc",  # a whole mapping: its keys are dotted param names
                   {"train.no_such_param": {"kind": "float", "low": 0.1, "high": 1.0}},
                   {"train.learning_rate": {"kind": "normal", "low": 0.1, "high": 1.0}},
                   {"train.learning_rate": {"kind": "float", "low": 1.0, "high": 0.1}},
                   {"train.learning_rate": {"kind": "float", "low": 0, "high": 1, "log": True}},
                   {"model.num_units": {"kind": "choice", "choices": []}}],
    "team.workers": [*NOT_AN_INT, 0],
    **{f"paths.{key}": NOT_A_TEXT for key in DEFAULTS["paths"]},
    **dict.fromkeys(NAMES, NOT_A_NAME),
    **dict.fromkeys(FLAGS, NOT_A_FLAG),
    **dict.fromkeys(TEXTS, NOT_A_TEXT),
    **dict.fromkeys(PORTS, NOT_A_PORT),
    "paths.raw_data": [*NOT_A_TEXT, "data/raw/mnist.csv"],
    "paths.raw_manifest": [*NOT_A_TEXT, "data/raw/manifest.yaml"],
    **{f"paths.{n}_split": [*NOT_A_TEXT, f"data/{n}.npy"] for n in ("train", "val", "test")},
    "paths.model": [*NOT_A_TEXT, "models/model.h5"],
    "paths.onnx_model": [*NOT_A_TEXT, "models/model.keras"],
    "paths.model_card": [*NOT_A_TEXT, "reports/card.txt"],
    "paths.monitor_reference": [*NOT_A_TEXT, "reports/reference.json"],
}  # fmt: skip


def loader_for(key: str) -> str:
    """Who must refuse a wrong `key`: a stage, or for a tools' section the tools."""
    return "tools" if key.split(".")[0] in config.TOOL_SECTIONS else "stage"


def assert_refused(raw: dict, folder: Path, loader: str, names: list[str]) -> None:
    """The loader exits non-zero with one `error:` line naming the key."""
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.dump(raw, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    with pytest.raises(SystemExit) as stop:
        LOADERS[loader](params_file)
    message = str(stop.value.code)
    assert stop.value.code not in (0, None)
    assert message.startswith(f"error: {params_file}: ") and "\n" not in message
    assert any(name in message for name in names), (names, message)


@pytest.mark.parametrize("key", sorted(INVALID))
def test_every_wrong_value_of_a_key_is_refused(tmp_path, key):
    for value in INVALID[key]:
        raw = with_value(DEFAULTS, key, value)
        assert_refused(raw, tmp_path, loader_for(key), [key, key.split(".")[-1]])
    if loader_for(key) == "tools":  # a stage reads past a wrong value in a tools' section
        params = LOADERS["stage"](tmp_path / "params.yaml")
        assert params.train == config.parse_params(DEFAULTS).train


@pytest.mark.parametrize("section", sorted(set(DEFAULTS) - {"seed"}))
def test_unknown_and_missing_keys_are_refused(tmp_path, section):
    raw = copy.deepcopy(DEFAULTS)
    raw[section]["no_such_key"] = 1
    assert_refused(raw, tmp_path, loader_for(section), [f"{section}.no_such_key: unknown key"])
    for name in DEFAULTS[section]:
        raw = copy.deepcopy(DEFAULTS)
        del raw[section][name]
        assert_refused(raw, tmp_path, loader_for(section), [f"{section}.{name}: missing"])


def test_every_leaf_key_has_wrong_values():
    def leaves(mapping: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in mapping.items():
            if isinstance(value, dict) and f"{prefix}{key}" != "tune.space":
                found |= leaves(value, f"{prefix}{key}.")
            else:
                found.add(f"{prefix}{key}")
        return found

    assert leaves(DEFAULTS) <= set(INVALID)
