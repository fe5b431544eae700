"""``python -m fastconsumer``."""

import sys

from fastconsumer.cli import main

sys.exit(main())
