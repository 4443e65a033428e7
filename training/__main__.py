"""``python -m training`` runs the ``latent-train`` command."""

import sys

from training.cli import main

sys.exit(main())
