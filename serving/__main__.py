"""`python -m serving` is `latent-serve`."""

from serving.cli import serve_main

if __name__ == "__main__":
    raise SystemExit(serve_main())
