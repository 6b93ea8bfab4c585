"""`python -m nbbuild.cli`: the `nbbuild` command."""
import sys

from . import main

sys.exit(main())
