"""ONNX Runtime: export + parity, sessions, INT8 quantization, and the one latency-timing protocol."""
