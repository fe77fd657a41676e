"""The Optuna search (`make tune`): workers share a study; each trial is a DVC experiment.

`python -m pipeline.search.tune` is the entry point and holds the work. A worker runs
Optuna's `study.optimize`: each trial draws a point, runs it as
`dvc exp run --temp -n <study>-<trial> -S ...` and returns the objective read from the trial's
MLflow run; `MaxTrialsCallback` stops the worker once the study holds its budget. Workers on one
machine (`--workers N`) and on others share the study through its storage.

How the processes keep each other honest, in one place:

- **One `dvc` at a time in a clone's stash: DVC's own lock.** `dvc exp run --temp` stashes its
  experiment under DVC's repository lock and runs the newest stash entry just after releasing
  it. Every `dvc` of the search runs with `--wait-for-lock`, so a second one waits for the lock
  instead of failing after 3 s; a test runs two workers in one clone and finds each trial's run
  with its own point. Should one ever take another's entry (it could only in the moment between
  that release and the take), its MLflow run names the other experiment, and the trial fails
  rather than report another point's value (`read_result`).
- **`dvc` is never signalled; a stopped worker stops its trial's stages.** Killed or interrupted
  while stashing, `dvc` can leave the clone on a detached HEAD with the trial's params in
  params.yaml. So it runs in a process group of its own (a terminal's Ctrl-C does not reach it),
  and a worker interrupted (Ctrl-C, SIGTERM) sends SIGINT to the stages among its descendants
  (`tune.stop`), waiting out a stash first: the stage unwinds as on Ctrl-C, `dvc`, which
  ignores SIGINT while a stage runs, fails the experiment and cleans up, and the worker then
  marks the trial failed. The command stops its `--workers N` likewise, with SIGTERM: they too
  run in process groups of their own, so each is stopped once. A worker killed outright
  (SIGKILL) cannot do this: its trial's `dvc` runs on to its end, unread.
- **Dead workers' trials.** A trial left RUNNING by a worker that has ended is failed by the next
  worker that looks (at its start and after each trial): on this host by the pid in the trial's
  user attributes (`processes.process_alive`); with a database storage, on any host, by Optuna's
  heartbeats, which `study.optimize` records for its trial and checks before it asks for the
  next (RDBStorage's heartbeat_interval and grace_period).
- **Data once (FileLock).** Before any trial each worker runs `dvc repro preprocess`, one at a
  time per clone (a lock in `.tune/`: `dvc repro` lets DVC's lock go while a stage runs, and a
  second one would then fail on the first's outputs), so that the trials restore the data
  stages from DVC's cache instead of all fetching the data at once.
"""
