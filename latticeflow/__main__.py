"""``python -m latticeflow`` = the ``latticeflow`` command."""
import sys

from .cli import main

sys.exit(main())
