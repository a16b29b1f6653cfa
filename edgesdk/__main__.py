import sys

from edgesdk.cli import main

sys.exit(main())
