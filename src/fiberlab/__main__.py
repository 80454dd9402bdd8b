"""``python -m fiberlab`` (also what ``torchrun -m fiberlab`` runs)."""
import sys

from fiberlab.cli.main import main

sys.exit(main())
