"""gRPC inference service for autoencoder model folders (onnxruntime, no torch)."""
