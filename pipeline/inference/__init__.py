"""The registered model's own code: the ONNX network on ONNX Runtime, its MLflow pyfunc, and a
registered model copied to a local folder; used by train, evaluate and the servers."""
