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
- Parameters, as papermill gives them (parameters.py): `-p NAME VALUE`, `-r NAME VALUE`, `-f
  FILE.yaml` set values in a cell put after the one tagged `parameters`; rules that do not read a
  changed one are reused from the store. `--sweep` (or a YAML list) runs the notebook once per
  set, on one kernel, reusing what the runs share, and prints a table: a row per set with its
  values, what ran, was reused and failed, its seconds, `--show NAME` columns, ok or failed.
  `-o OUT.ipynb` writes the executed notebook (a pattern with `{NAME}` fields for a sweep).
- `status NOTEBOOK`, `why NOTEBOOK TARGET`, `graph NOTEBOOK [TARGET] [-o FILE]`: the notebook's
  rules registered as with --target (nothing is built but what such a plain cell reads), then `%nbbuild status | why | graph`;
  the text goes to stdout, `-o` writes the graph (SVG; a Mermaid diagram, said so on stderr,
  where no Graphviz lays one out; `-o -` is stdout).
- `store info|gc --shared [URL] [--quota SIZE]` looks after the shared tier (NBBUILD_SHARED):
  its size, evicting to its quota and merging its packs; `store team-key FILE` makes a team key.
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
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from ..errors import CommandFailed as Failed, CommandUsageError as Usage, SettingError
from ..settings import read as read_settings
from .kernel import kernel as _kernel, session as _session, shown as _shown, store_dir as _store_dir, \
    text as _text, through as _through
from ..notebook.auto import OFF_MARKER
from . import parameters
from .notebook import code_cells as _code_cells, read as _notebook, registered as _registered

__all__ = ["main"]


class _Pair(argparse.Action):
    """-p and -r: (name, value) in the order given, -p's value read as papermill reads it."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        name, text = values
        pairs = list(getattr(namespace, self.dest) or [])
        pairs.append((name, text if option in ("-r", "--raw") else parameters.value(text)))
        setattr(namespace, self.dest, pairs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:      # argparse's usage block, then the error: one line here
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
    runs = parameters.sets(args.parameters or [], args.file or [], args.sweep)
    written = _written(args.output, path, runs)
    shown, store = _store_dir(path, args.dir or args.settings.dir)
    only = f", building {' '.join(targets)} only" if targets else ""
    many = f", {len(runs)} parameter sets" if len(runs) > 1 else ""
    print(f"nbbuild: {args.notebook} in a fresh kernel{only}{many}; store {shown}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    rows: list[list[str]] = []
    failures: list[str] = []
    with _kernel(path, store) as run:
        for i, values in enumerate(runs):
            given, warning = parameters.inject(nb, values)
            if warning and i == 0:
                print(f"nbbuild: {warning}", file=sys.stderr, flush=True)
            if len(runs) > 1:
                print(f"nbbuild: {parameters.label(values)}", file=sys.stderr, flush=True)
            before, began = _counts(run), time.perf_counter()
            failure = _one_run(run, given, targets, path.name)
            if failure is not None:
                failures.append(failure if len(runs) == 1 else f"{parameters.label(values)}: {failure}")
            if (out := written[i]) is not None:
                _write(given, out)
            if len(runs) > 1:
                after = _counts(run)
                rows.append([*(repr(values.get(n)) for n in _swept(runs)),
                             *(str(a - b) for a, b in zip(after, before)), f"{time.perf_counter() - began:.1f}",
                             *(_shown_value(run, n) for n in args.show or []),
                             "failed" if failure is not None else "ok"])
        summary = _session(run)
        if summary:                     # said before the kernel's shutdown, which takes a moment
            print(f"{path.name}: {summary}; {time.perf_counter() - start:.1f} s in all", flush=True)
    if rows:
        print(_table([*_swept(runs), "ran", "reused", "failed", "seconds", *(args.show or []), "status"], rows))
    if failures:
        raise Failed(failures[0] if len(runs) == 1 else
                     f"{len(failures)} of {len(runs)} parameter sets failed; the first, {failures[0]}")
    return 0


def _one_run(run: Any, nb: Any, targets: list[str], name: str) -> str | None:
    failure = _through(run, _registered(nb) if targets else [(n, c, c.source) for n, c in _code_cells(nb)], name)
    if failure is None and targets:
        wanted = " ".join(targets)
        _, error, _ = run(f"%build {wanted} --dry-run")     # checks the targets, runs nothing
        if error is not None:
            raise Usage(f"--target: {error}")
        _, error, _ = run(f"%build {wanted}")
        failure = error
    return failure


def _written(output: str | None, notebook: Path, runs: list[dict]) -> list[Path | None]:
    """Where each run's executed notebook goes (-o): a pattern with {NAME} fields for a sweep."""
    if output is None:
        return [None] * len(runs)
    if len(runs) > 1 and "{" not in output:
        raise Usage(f"-o {output}: a sweep writes a notebook per parameter set: give a pattern such as "
                    f"'out-{{{_swept(runs)[0]}}}.ipynb'")
    found: list[Path | None] = []
    for values in runs:
        try:
            where = Path(output.format(**values))
        except (KeyError, IndexError, ValueError) as e:
            raise Usage(f"-o {output}: the pattern names {e} , which no -p gives: use the parameters' names "
                        "in braces") from None
        if where.resolve() == notebook.resolve():
            raise Usage(f"-o {output}: that is the notebook given: the input is never written; name another file")
        if not where.resolve().parent.is_dir():
            raise Usage(f"-o {output}: its folder {where.parent} does not exist")
        found.append(where)
    return found


def _write(nb: Any, where: Path) -> None:
    import nbformat
    try:
        nbformat.write(nb, str(where))
    except OSError as e:
        raise Failed(f"-o {where}: cannot write it ({e.strerror or e})") from None
    print(f"nbbuild: wrote {where}", file=sys.stderr, flush=True)


def _swept(runs: list[dict]) -> list[str]:
    """The names whose values differ between the runs: the sweep's columns."""
    names = list(dict.fromkeys(n for values in runs for n in values))
    return [n for n in names if len({repr(values.get(n)) for values in runs}) > 1] or names


def _counts(run: Any) -> tuple[int, int, int]:
    """(ran, reused, failed) of the session so far, from `%nbbuild metrics`."""
    found = re.search(r"ran (\d+), reused (\d+), failed (\d+)", _session(run) or "")
    return (int(found[1]), int(found[2]), int(found[3])) if found else (0, 0, 0)


def _shown_value(run: Any, name: str) -> str:
    """`--show NAME`: the value's text form after a run, shortened (an ordinary cell, not a rule)."""
    cell, error, _ = run(f"{OFF_MARKER}\n{name}")
    said = " ".join(_text(cell).split()) if error is None else "—"
    return said if len(said) <= 40 else said[:39] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _look(args: argparse.Namespace, command: str) -> Any:
    """The cell of `command` (a `%nbbuild` line) run after the notebook's rules are registered."""
    path, nb = _notebook(args.notebook)
    _, store = _store_dir(path, args.dir or args.settings.dir)
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
    if args.action == "team-key":
        return _team_key(args.file)
    if args.file:
        raise Usage(f"{args.action} takes no FILE (only team-key does)")
    if args.shared is not None:
        return _shared_store(args)
    if args.quota is not None:
        raise Usage("--quota goes with gc --shared (the local store's quota: %nbbuild store --quota, NBBUILD_QUOTA)")
    where = args.dir or args.settings.dir or ".nbbuild"
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
        b = Build(path, workers=1, progress=False, shared="", settings=args.settings)
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


def _team_key(file: str | None) -> int:
    from ..store.signing import new_key_file
    if not file:
        raise Usage("team-key FILE: name the file to write a new team key to")
    try:
        new_key_file(file)
    except FileExistsError:
        raise Usage(f"{file} exists already: a team key is made once, then copied to each member") from None
    except OSError as e:
        raise Usage(f"{file}: {e.strerror or e}") from None
    print(f"wrote a new team key to {file} (mode 0600). Give each member a copy (kept 0600) and set "
          f"NBBUILD_TEAM_KEY={os.path.abspath(file)} with NBBUILD_SHARED=URL")
    return 0


def _shared_store(args: argparse.Namespace) -> int:
    """`store info|gc --shared [URL]`: the shared tier alone; no local store is needed or touched."""
    import tempfile
    url = args.shared or args.settings.shared
    if not url:
        raise Usage("--shared needs a location: --shared URL, or set NBBUILD_SHARED")
    if args.action == "clear" or args.foreign:
        raise Usage("--shared goes with info and gc [--quota SIZE]; the shared tier is never cleared from here")
    quota = args.quota if args.quota is not None else args.settings.shared_quota
    quota = None if quota == math.inf else quota      # NBBUILD_SHARED_QUOTA=unlimited: none
    if args.action != "gc" and args.quota is not None:
        raise Usage("--quota goes with gc --shared")
    from ..build import Build
    from ..errors import NbbuildError
    from ..notebook.views import shared_sweep, shared_text
    with tempfile.TemporaryDirectory(prefix="nbbuild-shared-") as local:
        try:
            with Build(local, workers=1, progress=False, shared=url, settings=args.settings) as b:
                if args.action == "gc":
                    print(shared_sweep(b, quota))
                print(shared_text(b))
        except NbbuildError as e:
            raise Usage(str(e)) from None
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
    given = run.add_argument_group("parameters (papermill's conventions)")
    given.add_argument("-p", "--parameter", dest="parameters", nargs=2, metavar=("NAME", "VALUE"),
                       action=_Pair, help="set NAME to VALUE in a cell after the one tagged `parameters`; "
                       "VALUE is read as True, False, None, a number, else text (repeat for more names)")
    given.add_argument("-r", "--raw", dest="parameters", nargs=2, metavar=("NAME", "VALUE"), action=_Pair,
                       help="the same, VALUE kept as text")
    given.add_argument("-f", "--parameters-file", dest="file", metavar="FILE", action="append",
                       help="a YAML file of NAME: VALUE; a list of such mappings runs the notebook once for each")
    given.add_argument("--sweep", action="store_true", help="a name given several times with -p takes each "
                       "value in turn (several such names: every combination), all on one kernel, reusing what "
                       "the runs share; a table of the runs follows")
    given.add_argument("--show", metavar="NAME", action="append",
                       help="with a sweep: a column of NAME's value after each run")
    run.add_argument("-o", "--output", metavar="OUT.ipynb", help="write the executed notebook, with its "
                     "outputs and the parameters' cell, to OUT.ipynb (the input is never written); with a "
                     "sweep, a pattern such as 'out-{alpha}.ipynb'")
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
    store.add_argument("action", choices=("info", "gc", "clear", "team-key"), metavar="info|gc|clear|team-key")
    store.add_argument("file", nargs="?", metavar="FILE", help="with team-key: the key file to make")
    store.add_argument("--shared", nargs="?", const="", metavar="URL", help="info or gc the shared tier at URL "
                       "(default: NBBUILD_SHARED) instead of the local store; needs NBBUILD_TEAM_KEY")
    store.add_argument("--quota", metavar="SIZE", help="with gc --shared: the shared tier's quota "
                       "(default: NBBUILD_SHARED_QUOTA, else none: packs are merged, no value evicted)")
    store.add_argument("--foreign", action="store_true", help="with gc: remove only the entries other keys "
                       "signed (other users, another XDG_CONFIG_HOME), which are otherwise kept")
    store.add_argument("--dir", metavar="DIR", help="the store (default: NBBUILD_DIR, else .nbbuild here)")
    store.set_defaults(func=cmd_store)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.settings = read_settings()       # the NBBUILD_* variables, once, now (settings.py)
        return args.func(args)
    except SettingError as e:
        print(f"nbbuild {args.command}: {e}", file=sys.stderr)
        return 2
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
