"""Watching the served model: the prediction log, /metrics, a shadow model, drift (make monitor).

In a server (wired in pipeline/serving/asgi.py): statistics.py, prediction_log.py, metrics.py,
recorder.py (with the shadow). Elsewhere: reference.py (written by evaluate), drift.py and
monitor.py (`make monitor`, its report). Between processes:

- **Server processes share the log**: one writer thread each, on its own connection to the one
  SQLite file in write-ahead-log mode: readers never block writers, writers take turns (waiting
  up to BUSY_TIMEOUT_S), and a transaction is whole in the file or absent, also after kill -9.
- **Workers add up their metrics**: with `--workers N` the supervisor sets
  PROMETHEUS_MULTIPROC_DIR to a fresh folder (removed when it stops); any worker's /metrics adds
  up every worker's files there (prometheus-client's multiprocess mode).
- **The shadow and the log never hold up an answer**: a request only puts its scored batch on
  bounded queues; what cannot be queued is dropped and counted in /metrics.
"""
