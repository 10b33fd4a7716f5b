"""``python -m pyfriction``: the command line (see :mod:`pyfriction.cli`)."""

import sys

from pyfriction.cli import main

if __name__ == "__main__":
    sys.exit(main())
