"""``python -m efficientmod`` (also what ``torchrun -m efficientmod train`` runs)."""
import sys

from efficientmod.cli import main

sys.exit(main())
