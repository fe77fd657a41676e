"""params.yaml schema: defaults load, YAML 1.2 numbers work, bad values fail with one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import config, tools

from .support import REPO, with_value


@pytest.fixture(scope="module")
def defaults() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("text", "expected"), [("5e-04", 0.0005), ("1e-3", 0.001), ("2E-3", 0.002)]
)
def test_yaml12_numbers_written_by_dvc_exp_are_numbers(defaults, text, expected):
    # PyYAML (YAML 1.1) reads `5e-04` as a string; `dvc exp run -S` writes exactly that.
    loaded = yaml.safe_load(f"learning_rate: {text}")["learning_rate"]
    assert isinstance(loaded, str)
    params = config.parse_params(with_value(defaults, "train.learning_rate", loaded))
    assert params.train.learning_rate == pytest.approx(expected)


@pytest.mark.parametrize(
    ("key", "value", "phrase"),
    [
        ("model.time_steps", 14, "time_steps × n_input must be 784"),
        ("train.steps_per_execution", 30, "iterations (2000) must be a multiple of"),
        ("train.steps_per_execution", 40, "log_every (100) must be a multiple of"),
        ("train.batch_shards", 3, "batch_size (128) must be a multiple of batch_shards (3)"),
    ],
)  # fmt: skip
def test_a_rule_across_keys_is_named_with_the_values(defaults, key, value, phrase):
    with pytest.raises(config.ConfigError) as error:
        config.parse_params(with_value(defaults, key, value))
    message = str(error.value)
    assert key.split(".")[-1] in message and phrase in message and "\n" not in message


def test_a_stage_holds_its_params_and_a_tool_the_tools_settings_too(defaults):
    params, everything = config.parse_params(defaults), tools.parse_params(defaults)
    sections = {"seed", "data", "model", "train", "mlflow", "evaluate", "paths"}
    assert set(config.Params.model_fields) == sections
    assert not hasattr(params, "serve") and everything.serve.port == defaults["serve"]["port"]
    assert everything.train == params.train
    with pytest.raises(config.ConfigError, match=r"^params.yaml: lab: unknown key$"):
        config.parse_params(defaults | {"lab": {}})  # an unknown section fails a stage too


def test_rows_of_two_image_lines_are_allowed(defaults):
    raw = with_value(with_value(defaults, "model.time_steps", 14), "model.n_input", 56)
    assert config.parse_params(raw).model.n_input == 56


def run_stage(stage: str, params_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage}", "--params", str(params_file)],
        capture_output=True, text=True, timeout=120, cwd=params_file.parent,
    )  # fmt: skip


@pytest.mark.parametrize("stage", ["fetch", "preprocess", "train", "evaluate"])
def test_stage_exits_with_one_line_before_any_work(tmp_path, defaults, stage):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value(defaults, "train.learning_rate", "0.001x")))
    result = run_stage(stage, bad)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {bad}: train.learning_rate = '0.001x': Input should be a valid number, "
        "unable to parse string as a number"
    ]
    assert [path.name for path in tmp_path.iterdir()] == ["params.yaml"]  # its outputs' folders


def test_unreadable_params_file_is_one_line(tmp_path):
    result = run_stage("fetch", tmp_path / "absent.yaml")
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'absent.yaml'}: cannot read (No such file or directory)"
    )


def test_a_first_import_pauses_the_collector_once_and_freezes_what_it_loaded():
    # in a process of its own: a freeze lasts as long as the process
    script = """
import gc, json
from pipeline.runtime import cli
seen = []
for _ in range(2):
    with cli.first_import("json"):
        seen.append(gc.isenabled())
        loaded = [[n] for n in range(1000)]  # alive at the end: frozen
print(seen, gc.isenabled(), gc.get_freeze_count() >= 1000)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert result.stdout.split() == ["[False,", "True]", "True", "True"]
