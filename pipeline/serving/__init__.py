"""Using the trained model: the MLflow model's code, and (later) serving and prediction."""
