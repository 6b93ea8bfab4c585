"""`python -m nbbuild`: the `nbbuild` command (cli.py)."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
