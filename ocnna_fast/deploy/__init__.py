"""Stage 6, deployment: ONNX or TorchScript export verified in its runtime
(``export``) and latency measured the same way for every runtime
(``latency``).
"""
