"""The notebook `nbbuild` is given: read and checked (one line for what is not a notebook, or one
that never loads nbbuild), its code cells numbered as an error names them, and the cells that
register its rules without building them (`--target`, and the commands that only look).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import CommandUsageError
from .kernel import jupyter

__all__ = ["read", "code_cells", "registered", "LOADS"]

LOADS = re.compile(r"^\s*%(re)?load_ext\s+nbbuild\s*$", re.M)
_RULE_LINE = re.compile(r"^%%rule(\s|$)")
_OWN_LINE = re.compile(r"^%(build|nbbuild)(\s|$)")     # the notebook's own builds and looks


def read(given: str) -> tuple[Path, Any]:
    path = Path(given)
    if not path.exists():
        raise CommandUsageError(f"no such notebook: {given}")
    if path.is_dir():
        raise CommandUsageError(f"{given} is a folder: give a notebook file (NAME.ipynb)")
    not_one = f"{given} is not a Jupyter notebook ({{}}): give a .ipynb file"
    try:               # a first look without nbformat, whose import alone may take a second
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except UnicodeDecodeError:
        raise CommandUsageError(not_one.format("it is not text")) from None
    except ValueError:
        raise CommandUsageError(not_one.format("it is not JSON")) from None
    except OSError as e:
        raise CommandUsageError(f"cannot read {given}: {e.strerror or e}") from None
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise CommandUsageError(not_one.format("JSON without a notebook's `nbformat`"))
    nbformat = jupyter()[0]
    try:
        nb = nbformat.reads(text, as_version=4)
        cells = list(nb.cells)
    except Exception as e:  # nbformat's errors for a malformed notebook differ by release
        raise CommandUsageError(not_one.format((str(e).splitlines() or [type(e).__name__])[0][:120])) from None
    if not any(c.cell_type == "code" and LOADS.search(c.source) for c in cells):
        raise CommandUsageError(f"{given} never loads nbbuild: add a cell `%load_ext nbbuild` above its first %%rule cell")
    return path.resolve(), nb


def code_cells(nb: Any) -> list[tuple[int, Any]]:
    """(number among the notebook's code cells, from 1; cell): how an error names its cell."""
    return list(enumerate((c for c in nb.cells if c.cell_type == "code"), start=1))


def registered(nb: Any) -> list[tuple[int, Any, str]]:
    """The cells that define the build, changed so that nothing is built: each `%%rule` line gets
    --lazy (a parametric rule is lazy already), the notebook's own `%build` and `%nbbuild` lines
    go, and so do plain cells that read a name a rule above them produces (`clean.tail()`,
    `model(alpha=0.1)`): they use built values. But for one that binds a name a later rule reads
    (`columns = list(clean)`): it stays, after a `%build` of the names it reads."""
    from IPython.core.inputtransformer2 import TransformerManager
    from ..notebook.cells import analyse
    transform = TransformerManager().transform_cell

    def names(source: str) -> tuple[set[str], set[str]]:
        """(inputs, outputs other than imports); unknown for what analyse cannot read (%%bash)."""
        try:
            found = analyse(transform(source))
        except Exception:  # not Python, or anything analyse cannot read: nothing known
            return set(), set()
        return set(found.inputs), set(found.outputs) - set(found.imported)

    cells = []                          # (number, cell, source, rule?, inputs, outputs)
    produced: set[str] = set()
    parametric: set[str] = set()        # called in the cell, they build themselves
    for number, cell in code_cells(nb):
        lines = cell.source.splitlines()
        head = 0
        while head < len(lines) and lines[head].startswith("%%"):
            head += 1                                   # %%time and friends stacked on top
        rule = next((i for i in range(head) if _RULE_LINE.match(lines[i])), None)
        if rule is not None:
            words = lines[rule][len("%%rule"):]
            inputs, outputs = names("\n".join(lines[rule + 1:]))
            if "(" in words:
                outputs = {words.split("(")[0].strip()}
                parametric |= outputs
            elif "--lazy" not in words.split():
                lines[rule] += " --lazy"
            produced |= outputs
            cells.append((number, cell, "\n".join(lines), True, inputs, outputs))
            continue
        body = [line for line in lines[head:] if not _OWN_LINE.match(line)]
        if "".join(body).strip():
            inputs, outputs = names("\n".join(body))
            cells.append((number, cell, "\n".join(lines[:head] + body), False, inputs & produced, outputs))
    kept: list[tuple[int, Any, str]] = []
    needed: set[str] = set()            # names that rules further down read
    for number, cell, source, is_rule, inputs, outputs in reversed(cells):
        if is_rule:
            needed |= inputs
        elif inputs:                    # it reads built values
            if not outputs & needed:
                continue
            needed |= inputs
            kept.append((number, cell, source))
            if inputs - parametric:
                kept.append((number, cell, f"%build {' '.join(sorted(inputs - parametric))}"))
            continue
        kept.append((number, cell, source))
    return kept[::-1]
