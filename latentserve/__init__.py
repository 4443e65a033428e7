"""latentserve: the model-folder contract shared by training/ and serving/."""

__version__ = "0.1.0"
