"""The Optuna search (`make tune`): workers share a study; each trial is a DVC experiment.

`python -m pipeline.search.tune` is the entry point; trials.py holds the work. A worker asks the
study for a point, runs it as `dvc exp run --temp -n <study>-<trial> -S ...`, reads the
objective from the trial's MLflow run and tells the study, until the budget is spent. Workers
on one machine (`--workers N`) and on others share the study through its storage.

How the processes keep each other honest, in one place:

- **Start lock (flock, handed to `dvc`).** Concurrent `dvc exp run --temp` in one clone race
  on DVC's one experiment stash (one could run another's point). A worker holds an flock from
  stashing until a stage of its experiment runs, and passes the descriptor to its `dvc`
  (`pass_fds`): if the worker dies meanwhile, the lock stays held until that `dvc` has ended.
- **Seeing the stage start (/proc).** The worker knows DVC has taken its stash entry when a
  `python -m pipeline.<stage>` process carries the trial's marks (PIPELINE_OPTUNA_STUDY and
  PIPELINE_OPTUNA_TRIAL) in its environment: command lines and environments are matched as
  bytes in /proc (`processes.processes`).
- **`dvc` is never killed; the stage ends with the worker.** Killed while stashing, `dvc`
  leaves the clone on a detached HEAD. Instead the trial's stage is given the worker's pid
  (PIPELINE_STOP_WITH_PID); the stage watches it with a pidfd (`processes.stop_with`) and
  ends as on SIGTERM when the worker ends, however it ends; `dvc` then fails the experiment
  and cleans up.
- **Workers die with their command.** Extra workers started by `--workers N` ask Linux for
  SIGKILL when their parent dies (PR_SET_PDEATHSIG), so Ctrl-C on the command ends them all.
- **Orphaned trials.** A trial left RUNNING by a worker that died is failed by the next worker
  that looks: on this host by its pid (`processes.process_alive`); with a database storage on
  any host by its heartbeat, recorded by a thread every `heartbeat_interval` seconds.
- **Data once (FileLock).** Before any trial, one worker at a time runs `dvc repro preprocess`,
  so the trials restore the data stages from DVC's run cache instead of all fetching at once.
"""
