"""``python -m rvm_live``."""

import sys

from .cli import main

sys.exit(main())
