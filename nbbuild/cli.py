"""The `nbbuild` command: a notebook's build from a terminal or a CI job, in a real kernel.

Contract:
- `nbbuild run NOTEBOOK [--target NAME ...] [--dir DIR]` executes the notebook headless in a fresh
  Python kernel (nbclient) whose working directory is the notebook's folder, so `%load_ext
  nbbuild` opens the notebook's own store, as in Jupyter (`NBBUILD_DIR`, or `--dir`, names
  another). Every code cell runs, in order, as Run All would, until one fails. With `--target`,
  rule cells are only registered (`--lazy`), the notebook's own `%build` and `%nbbuild` lines are
  left out, and so are plain cells that read what rules produce (they use built values), but for
  one that binds a name a later rule reads, run after a build of what it reads; then one
  `%build NAME ...` builds the targets and what they need. While it runs, the kernel draws
  each build's progress line on stderr and then its report line, led by its targets
  (NBBUILD_VIEW=text, notebook/state.py); what cells write to stderr (warnings) follows each
  cell there, as a script's would; at the end stdout gets one line, the session's totals
  from `%nbbuild metrics` ("N builds: ran R, reused U, failed F; ..."). Exit 0; 1 when a cell
  failed (a rule, or any cell: one line naming it and the error's last line).
- `status NOTEBOOK`, `why NOTEBOOK TARGET`, `graph NOTEBOOK [TARGET] [-o FILE]`: the notebook's
  rules registered as with --target (nothing is built but what such a plain cell reads), then `%nbbuild status | why | graph`;
  the text goes to stdout, `-o` writes the graph (SVG; a Mermaid diagram, said so on stderr,
  where no Graphviz lays one out; `-o -` is stdout).
- `store info|gc|clear [--dir DIR]` needs no kernel: it opens the store (default `NBBUILD_DIR`,
  else `.nbbuild` here) with the Build API; `info` writes nothing; `gc` evicts down to the quota
  and prunes old traces, `gc --foreign` removes the entries other keys signed (and nothing else),
  `clear` empties it of this key's entries; each says what it deletes, then where the store stands. A folder that is no store is
  refused, and none is ever made.
- The notebook file is only read. Bad arguments (a missing or non-notebook file, a notebook that
  never loads nbbuild, an unknown target, a folder that is no store) are one line on stderr,
  saying what is wrong and what to do, and exit code 2; no traceback, ever.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["main"]

_LOADS = re.compile(r"^\s*%(re)?load_ext\s+nbbuild\s*$", re.M)
_RULE_LINE = re.compile(r"^%%rule(\s|$)")
_OWN_LINE = re.compile(r"^%(build|nbbuild)(\s|$)")     # the notebook's own builds and looks
_USAGE_ERROR = re.compile(r"^UsageError: (.*)$", re.M)
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]      # not its TCP warning on the terminal at every run
_ALLOWED = "raises-exception"                          # the tag nbclient and nbval honour too


class Usage(Exception):
    """Bad arguments: one line, exit code 2."""


class Failed(Exception):
    """The notebook (or its kernel) failed: one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:      # argparse's usage block, then the error: one line here
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------ the notebook

def _notebook(given: str) -> tuple[Path, Any]:
    path = Path(given)
    if not path.exists():
        raise Usage(f"no such notebook: {given}")
    if path.is_dir():
        raise Usage(f"{given} is a folder: give a notebook file (NAME.ipynb)")
    not_one = f"{given} is not a Jupyter notebook ({{}}): give a .ipynb file"
    try:               # a first look without nbformat, whose import alone may take a second
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except UnicodeDecodeError:
        raise Usage(not_one.format("it is not text")) from None
    except ValueError:
        raise Usage(not_one.format("it is not JSON")) from None
    except OSError as e:
        raise Usage(f"cannot read {given}: {e.strerror or e}") from None
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise Usage(not_one.format("JSON without a notebook's `nbformat`"))
    nbformat = _jupyter()[0]
    try:
        nb = nbformat.reads(text, as_version=4)
        cells = list(nb.cells)
    except Exception as e:  # nbformat's errors for a malformed notebook differ by release
        raise Usage(not_one.format((str(e).splitlines() or [type(e).__name__])[0][:120])) from None
    if not any(c.cell_type == "code" and _LOADS.search(c.source) for c in cells):
        raise Usage(f"{given} never loads nbbuild: add a cell `%load_ext nbbuild` above its first %%rule cell")
    return path.resolve(), nb


def _code_cells(nb: Any) -> list[tuple[int, Any]]:
    """(number among the notebook's code cells, from 1; cell): how an error names its cell."""
    return list(enumerate((c for c in nb.cells if c.cell_type == "code"), start=1))


def _registered(nb: Any) -> list[tuple[int, Any, str]]:
    """The cells that define the build, changed so that nothing is built: each `%%rule` line gets
    --lazy (a parametric rule is lazy already), the notebook's own `%build` and `%nbbuild` lines
    go, and so do plain cells that read a name a rule above them produces (`clean.tail()`,
    `model(alpha=0.1)`): they use built values. But for one that binds a name a later rule reads
    (`columns = list(clean)`): it stays, after a `%build` of the names it reads."""
    from IPython.core.inputtransformer2 import TransformerManager
    from .notebook.cells import analyse
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
    for number, cell in _code_cells(nb):
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


# ------------------------------------------------------------ the kernel

def _jupyter() -> tuple[Any, Any, Any, Any]:
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, DeadKernelError
        if importlib.util.find_spec("ipykernel") is None:    # the kernel is this Python's ipykernel
            raise ImportError("No module named 'ipykernel'")
    except ImportError as e:
        raise Failed(f"this command runs notebooks in a Jupyter kernel and needs nbformat, nbclient and "
                     f"ipykernel ({e}): pip install nbclient ipykernel") from None
    return nbformat, NotebookClient, CellExecutionError, DeadKernelError


def _store_dir(notebook: Path, given: str | None) -> tuple[str, str | None]:
    """(the store the kernel opens, what NBBUILD_DIR to give it). A relative path means the one
    typed here, not one under the notebook's folder, where the kernel runs."""
    setting = given or os.environ.get("NBBUILD_DIR")
    if setting:
        return os.path.abspath(setting), os.path.abspath(setting)
    return str(notebook.parent / ".nbbuild"), None


Run = Callable[..., tuple[Any, str | None, bool]]


@contextlib.contextmanager
def _kernel(notebook: Path, store: str | None) -> Iterator[Run]:
    """A fresh kernel in the notebook's folder; yields `run(source, tags=())` -> (the executed
    cell, why it failed or None, whether that was a one-line UsageError)."""
    nbformat, NotebookClient, CellExecutionError, DeadKernelError = _jupyter()
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
            raise Failed("the kernel died (out of memory? a crash in an extension module?)") from None
        # a magic's error is one UsageError line on stderr (nbbuild's own messages among them),
        # said once at the end; the rest of what the cell wrote there (warnings: nbbuild's about
        # the store, the user's own) is for the terminal, as a script's stderr would be
        errors = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
        said = _USAGE_ERROR.findall(errors)
        rest = _USAGE_ERROR.sub("", errors).strip("\n")
        if rest:
            print(rest, file=sys.stderr, flush=True)
        if _ALLOWED in tags or (raised is None and not said):
            return cell, None, False
        if said:
            return cell, said[-1], True
        return cell, raised, False

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(client.setup_kernel(env=env))
        except Exception as e:  # jupyter_client's errors for a kernel that does not start vary
            raise Failed(f"could not start a Python kernel ({type(e).__name__}: {e})") from None
        yield run


def _through(run: Run, steps: list[tuple[int, Any, str]], name: str) -> str | None:
    """Run the notebook's cells in order; None, or the line saying which one failed and why."""
    for number, cell, source in steps:
        _, error, usage = run(source, tuple(cell.metadata.get("tags", ())))
        if error is not None:
            return f"{error} (code cell {number} of {name})" if usage else \
                f"code cell {number} of {name} failed: {error}"
    return None


def _text(cell: Any) -> str:
    """What a cell showed as text: its stdout, and the plain-text form of what it displayed."""
    out = []
    for o in cell.outputs:
        if o.output_type == "stream" and o.name == "stdout":
            out.append(o.text)
        elif o.output_type in ("display_data", "execute_result") and "text/plain" in o.data:
            out.append(o.data["text/plain"].rstrip("\n") + "\n")
    return "".join(out)


def _shown(cell: Any, mime: str) -> str:
    """What a cell displayed as `mime` (the graph's image/svg+xml, say), or ''."""
    return next((o.data[mime] for o in cell.outputs
                 if o.output_type in ("display_data", "execute_result") and mime in o.data), "")


def _session(run: Run) -> str | None:
    """The session's totals: the `session` line of `%nbbuild metrics`."""
    cell, error, _ = run("%nbbuild metrics")
    if error is not None:
        return None
    text = _text(cell)
    found = re.search(r"^session\s+(.*)$", text, re.M)
    return found.group(1) if found else (text.strip().splitlines() or [None])[0]


# ------------------------------------------------------------ commands

def _targets(given: list[str]) -> list[str]:
    for t in given:
        if not t.strip() or "\n" in t or t.lstrip().startswith("-"):
            raise Usage(f"--target {t!r}: give a name a rule produces, a rule's name, or a call such as "
                        "'model(alpha=0.1)'")
    return [t.strip() for t in given]


def cmd_run(args: argparse.Namespace) -> int:
    path, nb = _notebook(args.notebook)
    targets = _targets(args.target or [])
    shown, store = _store_dir(path, args.dir)
    only = f", building {' '.join(targets)} only" if targets else ""
    print(f"nbbuild: {args.notebook} in a fresh kernel{only}; store {shown}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with _kernel(path, store) as run:
        failure = _through(run, _registered(nb) if targets else [(n, c, c.source) for n, c in _code_cells(nb)], path.name)
        if failure is None and targets:
            wanted = " ".join(targets)
            _, error, _ = run(f"%build {wanted} --dry-run")     # checks the targets, runs nothing
            if error is not None:
                raise Usage(f"--target: {error}")
            _, error, _ = run(f"%build {wanted}")
            failure = error
        summary = _session(run)
        if summary:                     # said before the kernel's shutdown, which takes a moment
            print(f"{path.name}: {summary}; {time.perf_counter() - start:.1f} s in all", flush=True)
    if failure is not None:
        raise Failed(failure)
    return 0


def _look(args: argparse.Namespace, command: str) -> Any:
    """The cell of `command` (a `%nbbuild` line) run after the notebook's rules are registered."""
    path, nb = _notebook(args.notebook)
    _, store = _store_dir(path, args.dir)
    with _kernel(path, store) as run:
        failure = _through(run, _registered(nb), path.name)
        if failure is not None:
            raise Failed(failure)
        cell, error, _ = run(command)
        if error is not None:
            raise Usage(error)
    return cell


def cmd_status(args: argparse.Namespace) -> int:
    sys.stdout.write(_text(_look(args, "%nbbuild status")))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    sys.stdout.write(_text(_look(args, f"%nbbuild why {_targets([args.target])[0]}")))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    out = args.output
    if out not in (None, "-") and not Path(out).resolve().parent.is_dir():
        raise Usage(f"-o {out}: its folder {Path(out).parent} does not exist")
    target = f" {_targets([args.target])[0]}" if args.target else ""
    cell = _look(args, f"%nbbuild graph{target}")
    if out is None:
        sys.stdout.write(_text(cell))
        return 0
    svg, mermaid = _shown(cell, "image/svg+xml"), _shown(cell, "text/vnd.mermaid")
    drawing = svg or mermaid or _text(cell)
    if out == "-":
        sys.stdout.write(drawing)
    else:
        try:
            Path(out).write_text(drawing, encoding="utf-8")
        except OSError as e:
            raise Usage(f"-o {out}: cannot write it ({e.strerror or e})") from None
    if not svg:
        what = "a Mermaid diagram" if mermaid else "the text tree"
        print(f"nbbuild: no Graphviz to lay out SVG here: wrote {what} instead (install graphviz, or "
              f"pygraphviz, for SVG)", file=sys.stderr)
    elif out != "-":
        print(f"nbbuild: wrote {out}", file=sys.stderr)
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    where = args.dir or os.environ.get("NBBUILD_DIR") or ".nbbuild"
    path = Path(where)
    if not path.exists():
        raise Usage(f"no store at {where}: nothing was built there (a notebook's store is .nbbuild beside "
                    "it; --dir DIR or NBBUILD_DIR names another)")
    if not path.is_dir() or not (path / "cache.db").is_file():
        raise Usage(f"{where} is not an nbbuild store (no cache.db in it): --dir takes a store's folder, "
                    "such as NOTEBOOK_FOLDER/.nbbuild")
    from .build import Build
    from .errors import NbbuildError
    try:
        b = Build(path, workers=1, progress=False)
    except NbbuildError as e:
        raise Usage(f"store {where}: {e}") from None
    if args.foreign and args.action != "gc":
        raise Usage("--foreign goes with gc only: nbbuild store gc --foreign")
    from .notebook.views import store_text, sweep
    with b:
        if args.action != "info":
            print(sweep(b, args.action, args.foreign))
        print(store_text(b))
    return 0


# ------------------------------------------------------------ arguments

def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nbbuild", description="Build a notebook's rules from the command line, in a real kernel, "
                "on the notebook's own store. `nbbuild COMMAND --help` says more.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    dir_help = "the store (default: NBBUILD_DIR, else .nbbuild beside the notebook)"

    run = sub.add_parser("run", help="run the notebook headless: every cell, or only what targets need",
                         description="Execute NOTEBOOK in a fresh kernel in its folder, as Run All would: each "
                         "%%rule cell builds, restoring what is up to date from the store. Progress goes to "
                         "stderr, the session's totals to stdout. Exit 0, or 1 when a cell failed.")
    run.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file (it is only read)")
    run.add_argument("-t", "--target", metavar="NAME", action="append",
                     help="build only NAME and what it needs (repeat for more): rule cells are registered, "
                     "the notebook's own %%build and %%nbbuild lines and the plain cells that use built values "
                     "are left out. NAME: a name a rule produces, a rule, or a call such as 'model(alpha=0.1)'")
    run.add_argument("--dir", metavar="DIR", help=dir_help)
    run.set_defaults(func=cmd_run)

    looks = [("status", "every rule: up to date, stale, never built, failed; why; last run time, size",
              cmd_status), ("why", "why TARGET is stale, in words, or that it is up to date", cmd_why),
             ("graph", "the task graph: a text tree, or with -o FILE an SVG drawing", cmd_graph)]
    for name, what, func in looks:
        q = sub.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}. The notebook's rules "
                           "are registered in a fresh kernel and nothing is built.")
        q.add_argument("notebook", metavar="NOTEBOOK", help="the .ipynb file (it is only read)")
        if name == "why":
            q.add_argument("target", metavar="TARGET", help="a name a rule produces, a rule, or a call")
        if name == "graph":
            q.add_argument("target", metavar="TARGET", nargs="?", help="only TARGET and what it needs")
            q.add_argument("-o", "--output", metavar="FILE", help="write the drawing (SVG) to FILE; - for stdout")
        q.add_argument("--dir", metavar="DIR", help=dir_help)
        q.set_defaults(func=func)

    store = sub.add_parser("store", help="the store: info, gc (evict to the quota, prune), clear (empty it)",
                           description="Look after a store without a kernel. info: its size against its quota, "
                           "values, traces, hits; gc: evict down to the quota and prune old traces; clear: "
                           "empty it (every rule runs again; the saved quota stays).")
    store.add_argument("action", choices=("info", "gc", "clear"), metavar="info|gc|clear")
    store.add_argument("--foreign", action="store_true", help="with gc: remove only the entries other keys "
                       "signed (other users, another XDG_CONFIG_HOME), which are otherwise kept")
    store.add_argument("--dir", metavar="DIR", help="the store (default: NBBUILD_DIR, else .nbbuild here)")
    store.set_defaults(func=cmd_store)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except Usage as e:
        print(f"nbbuild {args.command}: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"nbbuild {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nbbuild {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:           # `nbbuild status NB | head`: the reader went away
        return 0
    except Exception as e:  # a bug of ours: still one line, never a traceback
        print(f"nbbuild {args.command}: internal error, {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
