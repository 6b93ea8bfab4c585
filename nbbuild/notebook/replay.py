"""What a rule cell shows, recorded in order while its body runs and shown again when its value is
reused instead: from memory, from the store, or after a kernel restart.

Contract:
- A rule cell's body runs inside `Capture(shell)` (cellcode.compile_cell puts it there). While it is
  open, what the body writes to stdout and stderr and what it displays through IPython's display
  publisher (rich outputs: HTML, images, a DataFrame) is recorded in the order it happened, and
  still shown live. Inline matplotlib figures, which IPython would draw after the cell ends, are
  drawn before the capture closes, so they are recorded too. `clear_output` clears the record as
  it clears the screen; an updated display (`display_id`) is recorded in its final state.
- Bodies running at the same time (helper threads, greenlets, a dependency run inline) each record
  their own: the recording in progress is a ContextVar. A rule run inside another's body (a
  parametric call) adds its record to the caller's too, as it appeared there. Threads a body
  starts are not recorded.
- `outputs(locals, names)` picks the cell's outputs, leaving out closed objects (files), adds the
  values the body changed in place (`changes`, versions.Changes: what it read by value, given as
  `watch`, and the rules' values it fetched), and hands them to `bind(outputs, rule, spoiled)`:
  the notebook binds what every rule that ran produced, not only the targets'. A body that moved
  the kernel's global random generators (randomness.Draws) records where they started as an
  input of its run, and where they ended under `GENERATORS` in its outputs.
- `before_shown` (a callable, or None) is called once, before the first output the body shows
  (the notebook's build view takes its place in the cell's output then, not before: a build that
  shows nothing sends it once, settled).
- When the body returns, the record is attached to its run (`trace.attach`): stored beside the
  value, outside its hash, so a different output alone never makes dependents stale.
- `replay(shell, record)` (showing.py) shows a record again, in order.
- The cell's result (its last expression, `LAST` among the outputs) is formatted as IPython's
  displayhook formats it (`display_formatter.format`) when the body ends, before the figures are
  drawn: plain IPython formats Out[n] before its inline backend draws the figures, and drawing moves
  a figure's artists (`ax.set_xlabel('x')` is `Text(0.5, 0, 'x')` before, `Text(0.5, 23.6, 'x')`
  after). IPython's displayhook then shows that format for that value (identity), so Out[n] is what
  plain execution shows while `_` and `Out` hold the value: in the kernel the capture hands it over
  at once (also for a rule of policy none, which keeps no record), and it is recorded as the
  "result", which `replay` does not show but the cell's magic hands over when the value is reused
  or was made in a worker (`show_result(shell, value, record)`). A result that cannot be kept (a
  widget, beyond `LIMIT`) is not recorded: the displayhook formats the value itself.
- Figures come after the cell's result, as in plain Jupyter (whose inline backend draws them after
  the cell): what is displayed while the inline figures are drawn (`drawing_figures`) is recorded
  as a "figure" and, in the kernel, held until `after_cell(shell)` (IPython's post_execute, after
  Out[n]) shows it; a replayed figure waits the same way. What is held is the shell's own, so a
  shell never shows another's (tests make several shells in one process).
- An output that cannot be kept is replaced by a note in the record, and the value still works:
  a widget view (it needs its live kernel object), data that is not plain JSON, or output beyond
  `LIMIT` bytes for one cell.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import threading
import types
from typing import Any, Iterator

from ..engine.randomness import Draws
from ..engine.trace import attach, current
from .ambient import Imports, Settings
from .cells import LAST
from .showing import FORMAT, expect, held
from .versions import Changes

__all__ = ["Capture", "recording", "LIMIT", "GENERATORS", "MODULES", "ORIGINS", "REBOUND", "SETTINGS", "rebound"]

GENERATORS = "__nbbuild_generators__"   # where the random generators ended (randomness.py)
SETTINGS = "__nbbuild_settings__"       # the library settings a cell changed (ambient.py)
ORIGINS = "__nbbuild_origins__"         # a name changed in place -> the rule whose value it was
REBOUND = "__nbbuild_rebound__"         # names the body bound in the namespace, not as locals (`global x`)
MODULES = "__nbbuild_modules__"         # the modules a cell bound: name -> module name (ambient.Imports)

LIMIT = 32 << 20
_WIDGET = "application/vnd.jupyter.widget-view+json"

_recording: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("nbbuild_capture", default=None)


class _Tee:
    """A stream that records into the capture of whoever writes, then writes through."""

    def __init__(self, stream: Any, name: str):
        self._stream = stream
        self._name = name

    def write(self, text: Any) -> Any:
        cap = _recording.get()
        if cap is not None and isinstance(text, str):
            cap.stream(self._name, text)
            if not cap.echo:
                return len(text)
            cap.showing()
        return self._stream.write(text)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._stream, attr)


class _Taps:
    """The streams and the display publisher are process-wide: they are wrapped while at least one
    capture is open, and put back when the last one closes (if nobody replaced them meanwhile)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: tuple[Any, Any, Any] | None = None

    def open(self, shell: Any) -> None:
        with self.lock:
            self.users += 1
            if self.users > 1:
                return
            pub = shell.display_pub
            self.saved = (sys.stdout, sys.stderr, pub)
            sys.stdout, sys.stderr = _Tee(sys.stdout, "stdout"), _Tee(sys.stderr, "stderr")
            publish, clear = pub.publish, getattr(pub, "clear_output", None)

            def tapped_publish(*args: Any, **kwargs: Any) -> Any:
                cap = _recording.get()
                if cap is not None:
                    data = kwargs.get("data", args[0] if args else None)
                    metadata = kwargs.get("metadata", args[1] if len(args) > 1 else None)
                    cap.display(data, metadata, kwargs.get("transient"), bool(kwargs.get("update")))
                    if cap.drawing and cap.echo and isinstance(data, dict):
                        held(cap.shell).append((dict(data), dict(metadata or {})))   # shown after Out[n]
                        return None
                    cap.showing()
                return publish(*args, **kwargs)

            def tapped_clear(*args: Any, **kwargs: Any) -> Any:
                cap = _recording.get()
                if cap is not None:
                    cap.clear(bool(kwargs.get("wait", args[0] if args else False)))
                return clear(*args, **kwargs)   # type: ignore[misc]

            pub.publish = tapped_publish
            if clear is not None:
                pub.clear_output = tapped_clear

    def close(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users > 0 or self.saved is None:
                return
            stdout, stderr, pub = self.saved
            self.saved = None
            if isinstance(sys.stdout, _Tee):
                sys.stdout = stdout
            if isinstance(sys.stderr, _Tee):
                sys.stderr = stderr
            for name in ("publish", "clear_output"):
                pub.__dict__.pop(name, None)


_taps = _Taps()


def recording() -> Capture | None:
    """The capture of the rule body running here, if any."""
    return _recording.get()


class Capture:
    """The record of one run of a rule cell's body (a context manager; see the module contract).
    `echo` False: what the body writes is recorded only (in a worker, whose output belongs in the
    kernel's cell, not in the worker's log, nor, through an inherited descriptor, twice there)."""

    echo = True
    follows_generators = True     # the kernel's global random generators (not a worker's)

    def __init__(self, shell: Any, bind: Any = None, namespace: dict | None = None,
                 watch: tuple[str, ...] = (), rule: str | None = None):
        self.shell = shell
        self.bind = bind
        self.rule = rule
        self.namespace = namespace if namespace is not None else {}
        self.changes = Changes()
        self.draws: Draws | None = Draws() if self.follows_generators else None
        self.settings: Settings | None = Settings() if self.follows_generators else None
        for name in watch:        # values read by value: a change in place is a new version
            if name in self.namespace:
                self.changes.watch(name, self.namespace[name])
        self.events: list[tuple] = []
        self.size = 0
        self.pending_clear = False
        self._token: contextvars.Token | None = None
        self.parent: Capture | None = None
        self.drawing = False
        self.before: dict | None = None
        self.ours: dict = {}         # what nbbuild bound in the namespace during this cell (state.bind)
        self.before_shown: Any = None    # called once before the body's first output is shown (the build view's place)

    def showing(self) -> None:
        """The body's output is about to be shown: what must come before it does, once."""
        call, self.before_shown = self.before_shown, None
        if call is not None:
            call()

    def mark(self) -> None:
        """The body's own code starts: the namespace's bindings now, to find those it makes."""
        self.before = dict(self.namespace)

    def __enter__(self) -> Capture:
        if self.draws is not None:
            self.draws.start()
        if self.settings is not None:
            self.settings.start()
        _taps.open(self.shell)
        self.parent = _recording.get()
        self._token = _recording.set(self)
        return self

    # Not a generator-based context manager: returning from __exit__ lets the body's own
    # exception go on from the cell's frame, so its traceback gains no frames of ours.
    def __exit__(self, etype: Any, exc: Any, tb: Any) -> None:
        if self.draws is not None:      # a body that failed, or returned no outputs
            self.draws.finish()
        try:
            if etype is None:
                with self.drawing_figures():
                    _flush_inline_figures()
        finally:
            if self._token is not None:
                _recording.reset(self._token)
            _taps.close()
        if etype is None:
            attach((FORMAT, tuple(self.events)))
        if self.parent is not None:   # a rule run inside another's body showed its output there too
            self.parent.extend(self.events)

    @contextlib.contextmanager
    def drawing_figures(self) -> Iterator[None]:
        """What is displayed meanwhile is the figures the inline backend draws after a cell: they
        are recorded as figures, and shown after the cell's result, as plain Jupyter shows them."""
        self.drawing = True
        try:
            yield
        finally:
            self.drawing = False

    def extend(self, events: list[tuple]) -> None:
        for event in events:
            if event[0] == "stream":
                self.stream(event[1], event[2])
            elif event[0] in ("display", "figure"):
                self._add(event, len(json.dumps(event[1:3], default=_bytes_only)))
            elif event[0] == "result":     # the inner rule's result is not the cell's
                continue
            else:
                self.events.append(event)

    def outputs(self, scope: dict, names: tuple[str, ...]) -> dict[str, Any]:
        """The cell's outputs from its locals. An object that says it is closed (`with open(...)
        as f` leaves one) is no use to another cell, and could not be stored: it is left out."""
        if LAST in names:
            self.result(scope.get(LAST))
        out = {k: scope[k] for k in names if k in scope and not _closed(scope[k])}
        modules = {k: v.__name__ for k, v in out.items() if isinstance(v, types.ModuleType)}
        if modules:     # by name: a module pickled beside a key of its name hashes differently once loaded
            out = {MODULES: Imports(modules), **{k: v for k, v in out.items() if k not in modules}}
        if self.before is not None and (found := rebound(self.before, self.namespace, self.ours)):
            for name in found:          # `global x` in a function it called, `globals()[...] = `
                out.setdefault(name, self.namespace[name])
            out[REBOUND] = found
        for name, value in self.changes.changed(self.namespace).items():
            out.setdefault(name, value)    # changed in place: a new version of the name
        if self.changes.origins:
            out[ORIGINS] = dict(self.changes.origins)
        if self.draws is not None:
            drawn, self.draws = self.draws.finish(), None
            rec = current.get()
            for key, digest in drawn[0].items():   # where the generators started: an input
                if rec is not None:
                    rec.read_input(key, digest)
            if drawn[1]:
                out[GENERATORS] = drawn[1]         # where they ended: restored on reuse
        if self.settings is not None and (changed := self.settings.finish()):
            out[SETTINGS] = changed                # matplotlib's rcParams it changed: set again on reuse
        if self.bind is not None:   # a rule that ran binds its outputs, also when it was only a dependency
            self.bind(out, self.rule, self.changes.spoiled)
        return out

    # -------------------------------------------------------- recording

    def _cleared(self) -> None:
        if self.pending_clear:     # clear_output(wait=True) clears when the next output comes
            self.events.clear()
            self.size, self.pending_clear = 0, False

    def _add(self, event: tuple, size: int) -> None:
        self._cleared()
        if self.size + size > LIMIT:
            self._note(f"an output of {size:,} bytes (this cell keeps at most {LIMIT:,})")
            return
        self.size += size
        self.events.append(event)

    def _note(self, what: str) -> None:
        self.events.append(("note", f"nbbuild: not replayed: {what}"))

    def stream(self, name: str, text: str) -> None:
        self._cleared()
        last = self.events[-1] if self.events else None
        if last is not None and last[0] == "stream" and last[1] == name and self.size + len(text) <= LIMIT:
            self.events[-1] = ("stream", name, last[2] + text)
            self.size += len(text)
        else:
            self._add(("stream", name, text), len(text))

    def display(self, data: Any, metadata: Any, transient: Any, update: bool) -> None:
        display_id = (transient or {}).get("display_id") if isinstance(transient, dict) else None
        if not isinstance(data, dict):
            return self._note("a display without a MIME bundle")
        if _WIDGET in data:
            return self._note("a widget (it needs its live kernel object; run the cell again to see it)")
        try:
            size = len(json.dumps([data, metadata or {}], default=_bytes_only))
        except (TypeError, ValueError) as e:
            return self._note(f"a display whose data is not plain JSON ({e})")
        event = ("figure" if self.drawing else "display", dict(data), dict(metadata or {}), display_id)
        if display_id is not None:
            for i, old in enumerate(self.events):
                if old[0] == "display" and old[3] == display_id:
                    if update:   # an update shows in place of the original: keep the final state
                        self.events[i] = event
                        return None
        if not update:           # an update of a display this run did not make shows nothing new
            self._add(event, size)
        return None

    def result(self, value: Any) -> None:
        """The cell's result, formatted now, as IPython's displayhook would format it once the cell's
        code is done: before the inline backend draws the figures."""
        if value is None:         # the displayhook shows nothing for None
            return
        try:   # a value with _ipython_display_ displays itself here (recorded as a display) and gives {}
            data, metadata = self.shell.display_formatter.format(value)
            size = len(json.dumps([data, metadata or {}], default=_bytes_only))
        except Exception:  # the user's reprs (IPython's formatters catch theirs): the displayhook tries later
            return
        if not isinstance(data, dict) or _WIDGET in data:   # a widget view needs its live object
            return
        self._cleared()                   # clear_output(wait=True) before it: Out[n] is the next output
        if self.size + size <= LIMIT:     # else the displayhook formats the value itself
            self.size += size
            self.events.append(("result", dict(data), dict(metadata or {})))
        if self.echo:
            expect(self.shell, value, data, metadata or {})

    def clear(self, wait: bool) -> None:
        if wait:
            self.pending_clear = True
        else:
            self.events.clear()
            self.size, self.pending_clear = 0, False


def rebound(before: dict, namespace: dict, ours: dict) -> tuple[str, ...]:
    """The names bound in `namespace` since it was `before`: IPython's own `_` names aside, and
    those holding what nbbuild bound meanwhile (`ours`: a dependency that ran binds its outputs)."""
    missing = object()
    return tuple(k for k, v in namespace.items() if not k.startswith("_") and k not in ("In", "Out")
                 and before.get(k, missing) is not v and ours.get(k, missing) is not v)


def _closed(obj: Any) -> bool:
    try:
        return getattr(obj, "closed", False) is True
    except Exception:  # an arbitrary object's attribute: whatever it raises, it is not a closed file
        return False


def _bytes_only(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return "x" * len(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _flush_inline_figures() -> None:
    """Draw pending inline figures now, inside the capture, not after the cell as IPython would."""
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    mpl = sys.modules.get("matplotlib")
    if inline is None or mpl is None:
        return
    try:
        backend = mpl.rcParams._get_backend_or_none() if hasattr(mpl.rcParams, "_get_backend_or_none") \
            else mpl.get_backend()
        if backend and "inline" in str(backend):
            inline.flush_figures()
    except Exception:  # drawing a user's figure may fail: it would have failed after the cell too
        pass
