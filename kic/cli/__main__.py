"""python -m kic.cli: the kic command, for a Python without kic's console script on its PATH."""

import sys

from kic.cli import main

sys.exit(main())
