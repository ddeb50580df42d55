"""Backends behind ``anchordetr_trt.compile``: inductor (torch.compile), tensorrt (Torch-TensorRT)."""
