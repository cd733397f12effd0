"""How a batch is computed: the device and precision, and the engine that runs a backbone.

``device`` picks the device and numeric precision from what the hardware
computes natively; ``torch`` is the one batched loop every forward pass uses,
over a PyTorch module; ``onnx`` exports a backbone once and runs it with
ONNX Runtime, keeping the exported model beside a disk cache's features.
"""
