"""The registered model's code: its ONNX network, its MLflow pyfunc, its local copy, its hash."""
