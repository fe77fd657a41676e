"""`make promote VERSION=N REASON="..." [FORCE=1]`: move `champion` to a version by hand.

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
from pipeline.runtime import cli

log = logging.getLogger(__name__)


def run(params: config.Params, version: int, reason: str, force: bool) -> None:
    """Move the alias; say the champion before and after."""
    if not reason.strip():
        raise rule.PromotionError('give a reason: make promote VERSION=N REASON="..."')
    tracking.connect(params.mlflow, tracking.repo_root())
    name = params.mlflow.registered_model
    who = os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()  # a server's user
    before = rule.promote(name, version, reason, who, force)
    log.info("%s@%s: version %s → version %d", name, rule.CHAMPION, before or "none", version)


ARGUMENTS = {
    "--version": {"type": int, "required": True, "help": "the version to promote"},
    "--reason": {"required": True, "help": "why, recorded with the move"},
    "--force": {"action": "store_true", "help": "even one that failed the gate"},
}


def main(argv: list[str] | None = None) -> None:
    expected = (rule.PromotionError, tracking.TrackingError)
    cli.run_command(run, argv, __doc__, ARGUMENTS, expected, config.load_params_or_exit)


if __name__ == "__main__":
    main()
