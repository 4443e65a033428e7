"""Training stage: MNIST data, conv AE/VAE, training loop, ONNX export, analysis (needs torch)."""
