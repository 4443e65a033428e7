"""`python -m serving` is `latent-serve`."""

from serving.process.cli import serve_main

if __name__ == "__main__":
    raise SystemExit(serve_main())
