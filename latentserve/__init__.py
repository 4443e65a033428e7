"""latentserve: the contract shared by training/, serving/ and clients (model-folder
manifest, priors, tensor codec, image spec, sampler, generated stubs) and the client itself
(`latentserve.client`, `latent-client` in `latentserve.cli`), which installs alone with
numpy, grpcio and protobuf. Importing this package imports nothing else.
"""

__version__ = "0.1.0"
