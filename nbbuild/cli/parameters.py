"""Parameters of a headless run, with papermill's conventions: the values a run is given, the sets a
sweep runs, and the cell that sets them in the notebook.

Contract:
- `value(text)`: a `-p NAME VALUE` value as papermill reads one: `True`, `False`, `None`, an int,
  a float, else the text itself (`-r NAME VALUE` keeps the text as it is).
- `sets(pairs, files, sweep)`: the parameter sets to run, in order, each `{name: value}`.
  `pairs` are `(name, value)` from `-p`/`-r`, in the order given; `files` the YAML files of `-f`:
  a mapping is one set of values, a list of mappings a set each (a sweep). Without `sweep`, a
  name given twice with `-p` is a mistake (one line says to add --sweep); with it, a name given
  several times takes each value in turn, and several such names give every combination, in the
  order given. `-p` values apply to every set a file gives. Names must be identifiers and values
  what YAML gives (numbers, text, booleans, None, lists, mappings); anything else is one line.
- `inject(nb, values)`: a copy of the notebook, its outputs cleared, with a code cell tagged `injected-parameters`
  (`# Parameters` and `name = value` lines) after the cell tagged `parameters`, which holds the
  defaults; an earlier injected cell (a notebook papermill or this command wrote) is replaced.
  Without a `parameters` cell it goes first, and `inject` says so (the returned warning), as
  papermill does. The given notebook is never changed.
- `label(values)`: `alpha=0.1, n=3`, a set as the sweep's table names it.
"""
from __future__ import annotations

import copy
import itertools
import keyword
from pathlib import Path
from typing import Any

from ..errors import CommandUsageError

__all__ = ["value", "sets", "inject", "label", "INJECTED", "PARAMETERS"]

PARAMETERS = "parameters"
INJECTED = "injected-parameters"
_LITERAL = (str, int, float, bool, type(None))


def value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check(name: str, given: Any, where: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise CommandUsageError(f"{where}: {name!r} is not a Python name: give NAME VALUE, NAME an identifier")
    if not _literal(given):
        raise CommandUsageError(f"{where}: the value of {name} is a {type(given).__name__}: give numbers, "
                                "text, booleans, None, or lists and mappings of them")


def _literal(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_literal(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, _LITERAL) and _literal(x) for k, x in v.items())
    return isinstance(v, _LITERAL)


def _read_yaml(path: str) -> list[dict[str, Any]]:
    import yaml
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandUsageError(f"-f {path}: cannot read it ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise CommandUsageError(f"-f {path}: not YAML{at} ({getattr(e, 'problem', None) or e})") from None
    found = data if isinstance(data, list) else [data if data is not None else {}]
    for i, one in enumerate(found):
        if not isinstance(one, dict):
            what = f"item {i + 1}" if isinstance(data, list) else "the file"
            raise CommandUsageError(f"-f {path}: {what} is not a mapping of NAME: VALUE")
        for name, given in one.items():
            _check(name, given, f"-f {path}")
    return found


def sets(pairs: list[tuple[str, Any]], files: list[str], sweep: bool) -> list[dict[str, Any]]:
    from_files: list[dict[str, Any]] = [{}]
    for path in files:
        read = _read_yaml(path)
        from_files = [{**a, **b} for a in from_files for b in read]
    given: dict[str, list[Any]] = {}
    for name, v in pairs:
        _check(name, v, "-p")
        if name in given and not sweep:
            raise CommandUsageError(f"-p {name} is given twice: add --sweep to run the notebook with each value, "
                                    "or give it once")
        given.setdefault(name, []).append(v)
    combos = [dict(zip(given, chosen)) for chosen in itertools.product(*given.values())]
    return [{**f, **c} for f in from_files for c in combos]


def inject(nb: Any, values: dict[str, Any]) -> tuple[Any, str | None]:
    import nbformat
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if INJECTED not in c.get("metadata", {}).get("tags", [])]
    for c in out.cells:          # what it shows is this run's (-o), not what the file held
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    if not values:
        return out, None
    lines = ["# Parameters"] + [f"{name} = {v!r}" for name, v in values.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines) + "\n", metadata={"tags": [INJECTED]})
    at = next((i + 1 for i, c in enumerate(out.cells)
               if c.cell_type == "code" and PARAMETERS in c.get("metadata", {}).get("tags", [])), None)
    warning = None
    if at is None:
        at = 0
        warning = ("no cell is tagged `parameters`: the values are set in a cell at the top, where a later "
                   "cell may set them again (tag the cell that holds the defaults `parameters`)")
    out.cells.insert(at, cell)
    return out, warning


def label(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={v!r}" for name, v in values.items()) or "(the notebook's defaults)"
