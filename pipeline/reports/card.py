"""The model card: what the model is, its data, params, scores, lineage, intended use and limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

import pandas as pd

import pipeline.params.config as config

# Markdown with $placeholders (string.Template), filled in by render().
TEMPLATE = Path(__file__).with_name("card_template.md")
HEADLINE_METRICS = ("test_accuracy", "test_loss", "test_macro_f1")


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
    cells = table.map(lambda value: f"{value:.4f}" if isinstance(value, float) else str(value))
    rows = ["| " + " | ".join(row) + " |" for row in [list(table.columns), *cells.to_numpy()]]
    return "\n".join([rows[0], "|" + "---|" * len(table.columns), *rows[1:]])


@dataclass(frozen=True)
class Figures:
    """The card's figures, as paths relative to the card."""

    confusion_png: str
    misclassified_png: str


def render(
    params: config.Params,
    manifest: dict,
    scores: tuple[dict[str, float], pd.DataFrame],
    lineage: Lineage,
    figures: Figures,
    validation: str,
) -> str:
    """Markdown for reports/model_card.md: TEMPLATE with the run's values put in."""
    metrics, per_class = scores
    data = params.data
    champion = f"version {lineage.champion_version}"
    if lineage.champion_version == lineage.registered_version:
        champion = "this version"
    values = {
        "data_name": data.name,
        "class_names": ", ".join(f"`{name}`" for name in data.class_names),
        "train_count": manifest["counts"]["x_train"],
        "test_count": manifest["counts"]["x_test"],
        "validation_size": data.validation_size,
        "seed": params.seed,
        "source": manifest["source"],
        "hashes": "\n".join(
            f"  - `{name}`: `{digest}`" for name, digest in manifest["arrays_sha256"].items()
        ),
        "per_class_table": markdown_table(per_class),
        "params_table": markdown_table(
            pd.DataFrame(sorted(config_items(params)), columns=["param", "value"])
        ),
        "champion": champion,
        "validation": validation,
    }
    values |= {key: f"{metrics[key]:.4f}" for key in HEADLINE_METRICS}
    values |= params.model.model_dump() | params.train.model_dump()  # the template names some
    values |= asdict(lineage) | asdict(figures)
    return Template(TEMPLATE.read_text()).substitute(values)


def validation_section(status: str, checks: list, outcome: str) -> str:
    """The gate's verdict: its status and outcome, then one row per check (gate.Check)."""
    rows = pd.DataFrame(
        [(c.name, f"`{c.metric}`", float(c.value), c.rule, c.outcome) for c in checks],
        columns=["check", "metric", "value", "needs", "result"],
    )
    failed = [c.failed for c in checks]
    rows.loc[failed, "result"] = "**" + rows.loc[failed, "result"].str.lower() + "**"
    return f"Gate: **{status}**. {outcome}\n\n{markdown_table(rows)}"


def config_items(params: config.Params) -> list[tuple[str, str]]:
    """The training-relevant params as (key, value) pairs."""
    sections = {"seed": params.seed, "data.validation_size": params.data.validation_size}
    sections |= {f"model.{k}": v for k, v in params.model.model_dump().items()}
    sections |= {f"train.{k}": v for k, v in params.train.model_dump().items()}
    return [(key, str(value)) for key, value in sections.items()]
