"""What every benchmark prints about the code it measured."""
from __future__ import annotations

import os
import subprocess

import nbbuild


def revision() -> str:
    """The commit of nbbuild measured, and whether its working tree differs from it."""
    where = os.path.dirname(os.path.abspath(nbbuild.__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=where, capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"{where}: {head}{' + local changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return f"{where}: not a git checkout"
