"""Loaded first by `make test` (`-p tests.startup`), before pytest's plugins from entry points.

nbval's plugin imports nbformat, nbformat imports jsonschema, and jsonschema imports rfc3987-syntax
where it is installed (JupyterLab's jupyter-events brings it), which builds some 40 Lark grammars
at import: 3-5 s of CPU in every pytest process, the controller and each xdist worker, for IRI
formats that no notebook schema uses. Left out here as the `nbbuild` command leaves it out
(nbbuild/__main__.py); a conftest.py would come too late, after the plugins.
"""
from __future__ import annotations

import sys

sys.modules.setdefault("rfc3987_syntax", None)
