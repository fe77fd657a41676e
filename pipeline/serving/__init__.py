"""Using the model: the registered model's code (ONNX Runtime), REST, image files, the demo page."""
