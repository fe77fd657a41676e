"""`make promote VERSION=N REASON="..." [FORCE=1]`: move `champion` to a version by hand.

    python -m pipeline.tools.promote --version N --reason TEXT [--force]

For a rollback, or a champion a person chooses: who and why are recorded as tags of the
version (`champion.by`, `champion.reason`, `champion.previous`), and the champion before and
after are printed. A version that failed the gate (`validation.status`) is refused unless
forced. Servers started afterwards serve the new champion.
"""

from __future__ import annotations

import getpass
import logging
import os

import pipeline.params.config as config
import pipeline.tracking.store as tracking
from pipeline.gate import rule
from pipeline.runtime.cli import setup_logging

log = logging.getLogger(__name__)


def who() -> str:
    """The MLflow user where a server with auth names one, else the login name."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def run(params: config.Params, version: int, reason: str, force: bool) -> int | None:
    """Move the alias; the champion before."""
    tracking.connect(params.mlflow, tracking.repo_root())
    name = params.mlflow.registered_model
    before = rule.promote(name, version, reason, who(), force)
    log.info("%s@%s: version %s → version %d", name, rule.CHAMPION, before or "none", version)
    return before


def main(argv: list[str] | None = None) -> None:
    parser = config.params_parser(__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, required=True, help="the version to promote")
    parser.add_argument("--reason", required=True, help="why, recorded with the move")
    parser.add_argument("--force", action="store_true", help="even one that failed the gate")
    args = parser.parse_args(argv)
    if not args.reason.strip():
        raise SystemExit('error: give a reason: make promote VERSION=N REASON="..."')
    params = config.load_params_or_exit(args.params)
    setup_logging()
    try:
        run(params, args.version, args.reason, args.force)
    except (rule.PromotionError, tracking.TrackingError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
