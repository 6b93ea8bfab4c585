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
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CommandFailed as Failed, CommandUsageError as Usage
from .kernel import kernel as _kernel, session as _session, shown as _shown, store_dir as _store_dir, \
    text as _text, through as _through
from .notebook import code_cells as _code_cells, read as _notebook, registered as _registered

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:      # argparse's usage block, then the error: one line here
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")



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
    from ..build import Build
    from ..errors import NbbuildError
    try:
        b = Build(path, workers=1, progress=False)
    except NbbuildError as e:
        raise Usage(f"store {where}: {e}") from None
    if args.foreign and args.action != "gc":
        raise Usage("--foreign goes with gc only: nbbuild store gc --foreign")
    from ..notebook.views import store_text, sweep
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
