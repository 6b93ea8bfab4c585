"""The fingerprint of the extension's source, kept beside its build (nbbuild/labextension/source.sha256),
so that a test can tell a build older than its source: `python labextension/stamp.py` prints it,
`python labextension/stamp.py write` records it (`make labextension` does, after building)."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILT = HERE.parent / "nbbuild" / "labextension"
RECORD = BUILT / "source.sha256"
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "src/*.ts", "style/*")


def fingerprint() -> str:
    h = hashlib.sha256()
    for pattern in SOURCES:
        for path in sorted(HERE.glob(pattern)):
            h.update(path.relative_to(HERE).as_posix().encode() + b"\0")
            h.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


if __name__ == "__main__":
    if sys.argv[1:] == ["write"]:
        RECORD.write_text(fingerprint() + "\n")
    print(fingerprint())
