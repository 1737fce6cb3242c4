"""`python -m roadwatch` runs the command line."""

import sys

from roadwatch.cli import main

sys.exit(main())
