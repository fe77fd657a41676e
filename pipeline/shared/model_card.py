"""The model card: what the model is, its data, params, scores, lineage, intended use and limits."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

import pipeline.shared.config as config


@dataclass(frozen=True)
class Lineage:
    git_commit: str
    dvc_experiment: str
    run_id: str
    registered_model: str
    registered_version: int | None
    champion_version: int | None


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table; floats to four decimals."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = [
        "| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(False)
    ]
    return "\n".join([header, rule, *rows])


def render(
    params: config.Params,
    manifest: dict,
    metrics: dict[str, float],
    per_class: pd.DataFrame,
    lineage: Lineage,
    confusion_png: str,
    misclassified_png: str,
) -> str:
    """Markdown for reports/model_card.md; figure paths are relative to the card."""
    model, train, data = params.model, params.train, params.data
    hashes = "\n".join(
        f"  - `{name}`: `{digest}`" for name, digest in manifest["arrays_sha256"].items()
    )
    param_rows = pd.DataFrame(sorted(config_items(params)), columns=["param", "value"])
    champion = (
        "this version" if lineage.champion_version == lineage.registered_version
        else f"version {lineage.champion_version}"
    )  # fmt: skip
    return f"""# Model card: {lineage.registered_model} version {lineage.registered_version}

## Model
A classifier of {data.name} images that reads each 28×28 image row by row: {model.time_steps} time
steps of {model.n_input} pixels go through one LSTM layer of {model.num_units} units (forget-gate
bias {model.forget_bias}); its last output feeds a dense softmax over {model.n_classes} classes:
{", ".join(f"`{name}`" for name in data.class_names)} (output column i is class i).
Trained with Adam (learning rate {train.learning_rate}) on softmax cross-entropy, batch
{train.batch_size}, for {train.iterations} iterations; TensorFlow 2 / Keras 3.

- Input: float32 array `(n, 28, 28)`, pixels scaled to [0, 1] (raw uint8 / 255).
- Output: float32 array `(n, {model.n_classes})` of class probabilities.

## Data
{data.name}, {manifest["counts"]["x_train"]} training images (of which {data.validation_size}
held out for validation, seed {params.seed}) and {manifest["counts"]["x_test"]} test images,
fetched from `{manifest["source"]}`. sha256 of the raw uint8 arrays:
{hashes}

## Evaluation on the test set
- accuracy: **{metrics["test_accuracy"]:.4f}**
- loss (cross-entropy): {metrics["test_loss"]:.4f}
- macro F1: {metrics["test_macro_f1"]:.4f}

{markdown_table(per_class)}

![confusion matrix]({confusion_png})

![misclassified test images]({misclassified_png})

## Params
{markdown_table(param_rows)}

## Lineage
- git commit (baseline): `{lineage.git_commit}`
- DVC experiment: `{lineage.dvc_experiment}`
- MLflow run: `{lineage.run_id}`
- registered model: `models:/{lineage.registered_model}/{lineage.registered_version}`;
  champion (`models:/{lineage.registered_model}@champion`): {champion}

## Intended use and limits
- Intended for learning, demonstration and comparison of training set-ups on images like those
  of {data.name}'s test set: one centred, size-normalised 28×28 grayscale image per example.
- Not for production use: it has seen only {data.name}; input unlike its training images
  (other sources, rotated, unsegmented or several objects per image) is out of scope, and its
  probabilities are not calibrated.
- Errors are not uniform across classes (see the per-class table); who made {data.name}, and
  how representative it is, is for its own documentation to say.
"""


def config_items(params: config.Params) -> list[tuple[str, str]]:
    """The training-relevant params as (key, value) pairs."""
    sections = {"seed": params.seed, "data.validation_size": params.data.validation_size}
    sections |= {f"model.{k}": v for k, v in params.model.model_dump().items()}
    sections |= {f"train.{k}": v for k, v in params.train.model_dump().items()}
    return [(key, str(value)) for key, value in sections.items()]
