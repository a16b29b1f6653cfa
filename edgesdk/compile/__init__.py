"""Build steps, each path + config in, path out: onnx.py (export, host, torch) and trt.py (TensorRT
engine, on the device, no torch)."""
