"""Benchmarks for latentserve: in-process onnxruntime vs gRPC, batching, encodings, memory."""
