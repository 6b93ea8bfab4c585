"""`%nbbuild auto`: every code cell runs as a rule, without `%%rule`.

An existing notebook becomes incremental with `%load_ext nbbuild` and `%nbbuild auto` at its top.

Contract:
- `Auto(shell)`: `on()` puts it among IPython's AST transformers, `off()` takes it out;
  `enabled` says which. `arm(raw_cell)` (at pre_run_cell) names the cell about to run: the next
  module IPython compiles is that cell's (an input transformer would also rewrite the text IPython
  checks for completeness, and what `%time` compiles; an AST transformer sees only what runs).
- That cell's module becomes `get_ipython().run_cell_magic('rule', '', cell)`, the code a
  `%%rule` line on top would give (its value is the cell's result), unless the cell stays ordinary:
  - it is empty or only comments;
  - it begins with a cell magic (`%%time`, `%%bash`, `%%rule` itself: a cell that says how it
    runs keeps its word);
  - it holds a line magic or a shell escape anywhere (`%matplotlib inline`, `!pip install`,
    `files = !ls`): what they do is a side effect a restored cell would not have;
  - its first line is the comment `# nbbuild: off` (the documented way to keep any cell out);
  - it cannot be a rule as plain Python: a syntax error (which plain execution then shows as
    usual), a star import, top-level `await`, `yield` or `return` (cellcode.refusal).
- `is_rule(cell)` says which, from the cell's text alone (and IPython's transformation of it, the
  same all session): asked twice per cell (the notebook's pre_run_cell, then the AST
  transformer), and again each time a cell runs again, it is answered once per text (`SEEN`
  texts kept).
- `python(cell)`: IPython's transformation of the cell's text (`shell.transform_cell`), kept by
  text while IPython's transformers are the same objects: the notebook asks for it up to three
  times per cell (is_rule, the rule magic, an ordinary cell's reads), and it tokenizes the cell.
"""
from __future__ import annotations

import ast
from typing import Any

from .cellcode import refusal

__all__ = ["Auto", "OFF_MARKER"]

OFF_MARKER = "# nbbuild: off"
SEEN = 1024


class Auto(ast.NodeTransformer):
    def __init__(self, shell: Any):
        self.shell = shell
        self.enabled = False
        self.cell: str | None = None    # the raw cell about to run, until it is transformed
        self._answers: dict[str, bool] = {}     # cell text -> is_rule's answer
        self._python: dict[str, str] = {}       # cell text -> its transformation, while _by is
        self._by: tuple[int, ...] = ()

    def on(self) -> None:
        if self not in self.shell.ast_transformers:
            self.shell.ast_transformers.append(self)
        self.enabled = True

    def off(self) -> None:
        while self in self.shell.ast_transformers:
            self.shell.ast_transformers.remove(self)
        self.enabled = False

    def arm(self, raw_cell: str | None) -> None:
        """A top-level cell is about to run (pre_run_cell): its code is the next one transformed.
        Code compiled while it runs (`%time`'s, a magic's) is not a cell."""
        self.cell = raw_cell if self.enabled else None

    def visit_Module(self, node: ast.Module) -> ast.Module:
        cell, self.cell = self.cell, None
        try:
            if cell is None or not self.is_rule(cell):
                return node
        except Exception:  # IPython drops an AST transformer that raises: the cell stays ordinary
            return node
        call = ast.parse(f"get_ipython().run_cell_magic('rule', '', {cell!r})").body
        return ast.fix_missing_locations(ast.Module(body=call, type_ignores=[]))

    def is_rule(self, cell: str) -> bool:
        answer = self._answers.get(cell)
        if answer is None:
            if len(self._answers) >= SEEN:
                self._answers.clear()
            answer = self._answers[cell] = self._judge(cell)
        return answer

    def python(self, cell: str) -> str:
        m = self.shell.input_transformer_manager
        by = tuple(map(id, (*m.cleanup_transforms, *m.line_transforms, *m.token_transformers,
                            *self.shell.input_transformers_post)))
        if by != self._by or len(self._python) >= SEEN:
            self._python, self._by = {}, by
        found = self._python.get(cell)
        if found is None:
            found = self._python[cell] = self.shell.transform_cell(cell)
        return found

    def _judge(self, cell: str) -> bool:
        code = [line for line in cell.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not code or cell.lstrip().startswith("%%"):
            return False
        first = cell.lstrip().splitlines()[0].strip()
        if first.replace(" ", "").lower() == OFF_MARKER.replace(" ", ""):
            return False
        try:
            python = self.python(cell)
        except Exception:  # IPython's own transformers on any text: then plain execution says
            return False
        # a line magic, a shell escape, `x?`: IPython's own transformation says, not a guess at
        # the text (`% n` on a continuation line is Python's operator)
        if "get_ipython()" in python and "get_ipython()" not in cell:
            return False
        return refusal(python) is None
