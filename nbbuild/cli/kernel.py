"""The kernel `nbbuild` runs a notebook's cells in: a fresh Python kernel (nbclient) in the
notebook's folder, one cell at a time, and what a cell showed, as text.

Contract:
- `kernel(notebook, store)` (a context manager) starts it with NBBUILD_VIEW=text (each build's
  progress and report line go to its stderr, which is ours) and NBBUILD_DIR=store when given;
  it yields `run(source, tags=()) -> (cell, error or None, whether the error is a UsageError line)`.
  What a cell writes to stderr besides a UsageError goes to our stderr as it comes. A cell tagged
  `raises-exception` may fail. 
- `through(run, steps, name)`: runs the steps `(number, cell, source)` in order until one fails;
  None, or one line naming the failed code cell and its error. Each step's cell takes the outputs
  it showed (for `-o`).
- `text(cell)`: its stdout and the plain text of what it displayed; `shown(cell, mime)`;
  `session(run)`: the session's totals line of `%nbbuild metrics`.
- A kernel that does not start, or dies, is `CommandFailed` with one line.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CommandFailed

__all__ = ["jupyter", "store_dir", "kernel", "through", "text", "shown", "session", "Run"]

_USAGE_ERROR = re.compile(r"^UsageError: (.*)$", re.M)
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]      # not its TCP warning on the terminal at every run
_ALLOWED = "raises-exception"                          # the tag nbclient and nbval honour too


def jupyter() -> tuple[Any, Any, Any, Any]:
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, DeadKernelError
        if importlib.util.find_spec("ipykernel") is None:    # the kernel is this Python's ipykernel
            raise ImportError("No module named 'ipykernel'")
    except ImportError as e:
        raise CommandFailed(f"this command runs notebooks in a Jupyter kernel and needs nbformat, nbclient and "
                     f"ipykernel ({e}): pip install nbclient ipykernel") from None
    return nbformat, NotebookClient, CellExecutionError, DeadKernelError


def store_dir(notebook: Path, given: str | None) -> tuple[str, str | None]:
    """(the store the kernel opens, what NBBUILD_DIR to give it): `given` is --dir, else the
    NBBUILD_DIR setting as read. A relative path means the one typed here, not one under the
    notebook's folder, where the kernel runs."""
    if given:
        return os.path.abspath(given), os.path.abspath(given)
    return str(notebook.parent / ".nbbuild"), None


Run = Callable[..., tuple[Any, str | None, bool]]


@contextlib.contextmanager
def kernel(notebook: Path, store: str | None) -> Iterator[Run]:
    """A fresh kernel in the notebook's folder; yields `run(source, tags=())` -> (the executed
    cell, why it failed or None, whether that was a one-line UsageError)."""
    nbformat, NotebookClient, CellExecutionError, DeadKernelError = jupyter()
    nb = nbformat.v4.new_notebook()
    client = NotebookClient(nb, kernel_name="python3", extra_arguments=_KERNEL_ARGS,
                            resources={"metadata": {"path": str(notebook.parent)}})
    env = dict(os.environ, NBBUILD_VIEW="text")        # builds drawn on our stderr, not into cells
    if store is not None:
        env["NBBUILD_DIR"] = store

    def run(source: str, tags: tuple[str, ...] = ()) -> tuple[Any, str | None, bool]:
        cell = nbformat.v4.new_code_cell(source)
        nb.cells.append(cell)
        try:
            client.execute_cell(cell, len(nb.cells) - 1)
            raised = None
        except CellExecutionError as e:
            said = (str(e.evalue).strip().splitlines() or [""])[0]
            raised = f"{e.ename}: {said}" if said else e.ename
        except DeadKernelError:
            raise CommandFailed("the kernel died (out of memory? a crash in an extension module?)") from None
        # a magic's error is one UsageError line on stderr (nbbuild's own messages among them),
        # said once at the end; the rest of what the cell wrote there (warnings: nbbuild's about
        # the store, the user's own) is for the terminal, as a script's stderr would be
        errors = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
        usage: list[str] = _USAGE_ERROR.findall(errors)
        rest = _USAGE_ERROR.sub("", errors).strip("\n")
        if rest:
            print(rest, file=sys.stderr, flush=True)
        if _ALLOWED in tags or (raised is None and not usage):
            return cell, None, False
        if usage:
            return cell, usage[-1], True
        return cell, raised, False

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(client.setup_kernel(env=env))
        except Exception as e:  # jupyter_client's errors for a kernel that does not start vary
            raise CommandFailed(f"could not start a Python kernel ({type(e).__name__}: {e})") from None
        yield run


def through(run: Run, steps: list[tuple[int, Any, str]], name: str) -> str | None:
    """Run the notebook's cells in order; None, or the line saying which one failed and why. Each
    step's cell gets the outputs it showed (a cell run twice, both runs')."""
    seen: set[int] = set()
    for number, cell, source in steps:
        executed, error, usage = run(source, tuple(cell.metadata.get("tags", ())))
        if id(cell) in seen:
            cell.outputs = list(cell.outputs) + list(executed.outputs)
        else:
            seen.add(id(cell))
            cell.outputs, cell.execution_count = executed.outputs, executed.get("execution_count")
        if error is not None:
            return f"{error} (code cell {number} of {name})" if usage else \
                f"code cell {number} of {name} failed: {error}"
    return None


def text(cell: Any) -> str:
    """What a cell showed as text: its stdout, and the plain-text form of what it displayed."""
    out = []
    for o in cell.outputs:
        if o.output_type == "stream" and o.name == "stdout":
            out.append(o.text)
        elif o.output_type in ("display_data", "execute_result") and "text/plain" in o.data:
            out.append(o.data["text/plain"].rstrip("\n") + "\n")
    return "".join(out)


def shown(cell: Any, mime: str) -> str:
    """What a cell displayed as `mime` (the graph's image/svg+xml, say), or ''."""
    return next((o.data[mime] for o in cell.outputs
                 if o.output_type in ("display_data", "execute_result") and mime in o.data), "")


def session(run: Run) -> str | None:
    """The session's totals: the `session` line of `%nbbuild metrics`."""
    cell, error, _ = run("%nbbuild metrics")
    if error is not None:
        return None
    said = text(cell)
    found = re.search(r"^session\s+(.*)$", said, re.M)
    lines: list[str | None] = [*said.strip().splitlines()]
    return found.group(1) if found else (lines or [None])[0]
