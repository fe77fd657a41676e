"""Watching the served model: the prediction log, /metrics, a shadow model, drift (make monitor).

What runs in a server (`make serve`, `make demo`; wired in pipeline/serving/asgi.py):
statistics.py (each image in a few numbers), prediction_log.py (the SQLite log and its writer
thread), metrics.py (Prometheus series and the /metrics middleware), shadow.py (a second model
on a thread of its own), recorder.py (what a server does with each scored batch). What runs
elsewhere: reference.py (what evaluate writes to compare with), drift.py (the tests and verdicts),
drift_report.py (the page and figure), monitor.py (`make monitor`).

Between processes, in one place:

- **Server processes share the log.** Each process (`--workers N`, or `make serve` beside
  `make demo`) has one writer thread and its own connection to the one SQLite file in
  write-ahead-log mode: readers (`make monitor`, pandas) never block writers, writers take
  turns at SQLite's write lock (waiting up to BUSY_TIMEOUT_S), and a transaction is either
  whole in the file or absent, also after `kill -9`.
- **Workers add up their metrics.** With `--workers N` the supervisor sets
  PROMETHEUS_MULTIPROC_DIR to a fresh folder before it starts the workers; prometheus-client
  then keeps each worker's values in files there and any worker's /metrics adds them all up.
  The folder goes when the server stops.
- **The shadow and the log never hold up an answer.** A request only puts its scored batch on
  bounded queues; what cannot be queued is dropped and counted in /metrics.
"""
