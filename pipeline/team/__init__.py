"""Team tooling: the shared MLflow tracking server (server.py) and its PostgreSQL (postgres.py)."""
