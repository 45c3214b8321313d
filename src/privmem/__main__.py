"""``python -m privmem``: the same as the ``privmem`` command."""

import sys

from .cli import main

sys.exit(main())
