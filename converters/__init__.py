"""Torch-TensorRT converters lowering the anchordetr ops to TensorRT plugins."""
