"""MLflow's own scoring server (the app `mlflow models serve` runs), for the serving benchmark.

It runs under `make serve`'s uvicorn set-up, body limit and workers, so that the benchmark
compares only the app and what it loads:

    python -m benchmarks.mlflow_server --model URI [--port PORT] [--workers N]
"""

import functools

from pipeline.params import tools
from pipeline.runtime import cli
from pipeline.serving import loader, serve
from pipeline.tracking import store as tracking


def build_app(model: str | loader.Served, params: tools.ToolParams, shadow: object = None):
    """MLflow's app around `model`: a URI MLflow resolves here, or (each of `--workers N`) the
    copy the supervisor made. No shadow, no prediction log, no /metrics: MLflow's server has
    none of them."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    tracking.connect(params.mlflow, tracking.repo_root())  # `models:/` resolves in that store
    uri = model.path if isinstance(model, loader.Served) else model
    return scoring_server.init(mlflow.pyfunc.load_model(uri, suppress_warnings=True))


def main(argv: list[str] | None = None) -> None:
    run = functools.partial(serve.run, module=__name__)
    cli.run_command(run, argv, __doc__, serve.ARGUMENTS, serve.EXPECTED, tools.load_params_or_exit)


if __name__ == "__main__":
    main()
