"""Structural pruning pipeline: dense PyTorch model -> pruned -> INT8 ONNX that passed accuracy/MACs/latency gates."""

__version__ = "0.1.0"
