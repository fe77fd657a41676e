"""The gate a trained model passes before it may become champion: behavioural checks on moved
and noisy images, and the verdict of floors, checks and gain (MLflow's MetricThreshold)."""
