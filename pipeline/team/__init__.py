"""Team tooling: the shared MLflow tracking server and its PostgreSQL, moving a store."""
