"""MLflow: the store (store.py), a run's lineage tags (lineage.py), the registry (registry.py)."""
