"""`python -m nbbuild` and the `nbbuild` script: the `nbbuild` command (cli.py)."""
from __future__ import annotations

import sys


def main() -> int:
    # nbformat imports jsonschema, which imports rfc3987-syntax where it is installed (JupyterLab's
    # jupyter-events brings it): some 40 Lark grammars built at import, 2-3 s of every command
    # that opens a notebook, for IRI formats that no notebook schema uses. Not in this process.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None blocks an import; typeshed omits it
    from .cli import main as command
    return command()


if __name__ == "__main__":
    sys.exit(main())
