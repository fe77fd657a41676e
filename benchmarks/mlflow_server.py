"""MLflow's own scoring server under `make serve`'s uvicorn set-up, body limit and workers, so that
the serving benchmark compares only the app: python -m benchmarks.mlflow_server --model URI"""

import functools

from pipeline.params import tools
from pipeline.runtime import cli
from pipeline.serving import loader, serve
from pipeline.tracking import store as tracking


def build_app(model: str | loader.Served, params: tools.ToolParams, shadow: object = None):
    """MLflow's app around `model` (a URI, or the supervisor's copy); no shadow, log or /metrics."""
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
