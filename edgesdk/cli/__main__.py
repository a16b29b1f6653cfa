"""`python -m edgesdk.cli`: the CLI, as `edgesdk` and `python -m edgesdk` run it."""

import sys

from edgesdk.cli import main

sys.exit(main())
