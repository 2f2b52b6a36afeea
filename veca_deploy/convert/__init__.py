"""Torch-free converters from a bundle's ONNX graphs: graph tools (metadata, simplify),
OpenVINO IR, the static TensorRT check and the TensorRT engine builder (run on the target)."""
