"""A rule cell whose body runs in another process (`%%rule NAME --executor processes|dask`): the
two hooks a compiled cell calls, as they are in the kernel and as they travel to a worker.

A cell's function reads its dependencies through `cells.FETCH` and records what it shows through
`cells.CAPTURE`, globals of the user's namespace. cloudpickle ships the function with the globals
it reads, so these two are shipped too; each pickles as its worker stand-in.

Contract:
- `CellFetch(state)(name, rule)`, in the kernel: the value of `name` as `rule` bound it (the
  version the cell reads), a tracked fetch of that rule. Pickled, it is a `RemoteFetch`: in a
  worker it fetches through a stub of that rule (rule.rule_stub: the same task key), so the
  value comes from those sent with the body or is asked of the kernel, and enters the trace as
  here. Either way the fetched value is noted in the running capture (versions.Changes), so that
  a body that changes it in place makes a new version of its names.
- `CellCapture(state)()`, in the kernel: a replay.Capture on the shell. Pickled, it is a
  `RemoteCapture`: a replay.Capture with no front end. It records what the body prints to stdout
  and stderr, what it shows with `display(obj)` (an IPython shell is made in the worker, with no
  history and a silent publisher, so rich reprs are IPython's own), and the pyplot figures it
  leaves open (drawn as PNG, then closed, as the inline backend does). The record is attached to the run
  (trace.attach) and comes back with the value.
- `received(state)`: the Rule.received hook of such a rule: called in the kernel when its body
  returns, it shows the record in the running cell, as if the body had run here, and binds the
  cell's outputs (as a rule that ran here binds them).
"""
from __future__ import annotations

import base64
import io
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable

from ..engine.trace import current
from .replay import Capture, recording
from .showing import replay
from .versions import fingerprint

if TYPE_CHECKING:
    from ..engine.rule import Rule
    from ..engine.task import Task
    from ..engine.trace import Recording
    from .state import NotebookState

__all__ = ["CellFetch", "CellCapture", "RemoteFetch", "RemoteCapture", "received"]


class CellFetch:
    def __init__(self, state: NotebookState):
        self.state = state

    def __call__(self, name: str, producer: str) -> Any:
        rule = self.state.build.rules.get(producer)
        if rule is None:
            raise NameError(f"name {name!r} is not defined: the cell that bound it is gone; run it again")
        return _take(rule, name)

    def __reduce__(self) -> tuple:
        return RemoteFetch, ()


def _take(rule: Rule, name: str) -> Any:
    """`name` from the rule's value (its dict of outputs), fetched; the value and the hash it was
    fetched with are noted, so that a change in place is found when the body ends."""
    task = rule.task()
    value = rule()
    cap, rec = recording(), current.get()
    if cap is not None and rec is not None:
        cap.changes.fetched(value, _fetched_hash(rec, task.key, value), rule.name)
    if not isinstance(value, dict) or name not in value:
        raise NameError(f"name {name!r} is not defined: the cell {rule.name} did not bind it")
    return value[name]


def _fetched_hash(rec: Recording, key: str, value: Any) -> str | None:
    """The hash the value was fetched with: in the kernel, the trace's; in a worker (whose record
    keeps keys only, and whose value is a copy sent to it), the value's own, taken now."""
    for group in reversed(rec.groups):
        for item in group:
            if isinstance(item, tuple) and item[0] == key:
                return item[1]
            if item == key:
                return fingerprint(value)
    return None


class RemoteFetch:
    """FETCH in a worker: a name's value through a stub of the rule that bound its version (a cell
    rule takes no arguments, so its task key is its name's)."""

    def __init__(self) -> None:
        self.stubs: dict[str, Any] = {}

    def __call__(self, name: str, producer: str) -> Any:
        stub = self.stubs.get(producer)
        if stub is None:
            from ..engine.rule import rule_stub
            stub = self.stubs[producer] = rule_stub(_no_body, producer, "persist")
        return _take(stub, name)


def _no_body() -> None:
    raise RuntimeError("a rule stub's body runs in the kernel, not here")


class CellCapture:
    def __init__(self, state: NotebookState):
        self.state = state

    def __call__(self, namespace: dict | None = None, watch: tuple[str, ...] = (),
                 rule: str | None = None) -> Capture:
        capture = Capture(self.state.shell, self.state.bind, namespace, watch, rule)
        capture.ours = self.state.ours
        capture.before_shown = getattr(self.state.view, "place", None)
        return capture

    def __reduce__(self) -> tuple:
        return RemoteCapture, ()


class _Publisher:
    """The display publisher of a worker: there is no front end; the capture's tap records."""

    def publish(self, data: Any = None, metadata: Any = None, **kwargs: Any) -> None:
        pass

    def clear_output(self, wait: bool = False) -> None:
        pass


def _worker_shell() -> Any:
    """IPython's shell, made once in a worker (no history, a silent publisher) so that
    `display`, `IPython.display.display` and rich reprs work as in the kernel. Where a shell
    exists already (a Dask worker thread in the kernel's own process), it is the kernel's: its
    plotting backend is left alone."""
    from IPython.core.interactiveshell import InteractiveShell
    if InteractiveShell.initialized():
        return InteractiveShell.instance()
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.enabled = False
    global _MADE
    shell = _MADE = InteractiveShell.instance(config=config)
    # duck-typed: the shell calls only these two methods, and IPython is not imported before here
    shell.display_pub = _Publisher()  # type: ignore[assignment]
    _plain_backend()
    return shell


_MADE: Any = None   # the shell made here: this process is a worker of ours, its figures are the body's


class RemoteCapture:
    """CAPTURE in a worker: `RemoteCapture()()` is the capture of one run of the body."""

    def __call__(self, namespace: dict | None = None, watch: tuple[str, ...] = (),
                 rule: str | None = None) -> Capture:
        return _WorkerCapture(_worker_shell(), None, namespace, watch, rule)


class _WorkerCapture(Capture):
    echo = False
    follows_generators = False

    def __enter__(self) -> Capture:
        super().__enter__()
        # each body here is a run of its own (what it fetches ran in the kernel): a capture a
        # worker thread inherited (Dask starts a thread for a seceded task) is not its caller
        self.parent = None
        return self

    def __exit__(self, etype: Any, exc: Any, tb: Any) -> None:
        if etype is None and self.shell is _MADE:    # (in the kernel's process, the kernel draws them)
            with self.drawing_figures():
                _draw_figures(self.shell)
        return super().__exit__(etype, exc, tb)


def _plain_backend() -> None:
    """A worker inherits the kernel's MPLBACKEND (the inline backend), which has no front end
    here and would close figures as it "shows" them: draw off-screen, figures kept for us."""
    if "inline" in os.environ.get("MPLBACKEND", ""):
        os.environ["MPLBACKEND"] = "agg"
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and "inline" in str(plt.get_backend()):
        plt.switch_backend("agg")
    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")


def _draw_figures(shell: Any) -> None:
    """The pyplot figures the body left open, as the inline backend would show them."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for number in plt.get_fignums():
        fig = plt.figure(number)
        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", bbox_inches="tight")
        except Exception:  # the user's figure may fail to draw, as it would inline; the value stands
            continue
        finally:
            plt.close(fig)
        shell.display_pub.publish(data={"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                         "text/plain": repr(fig)}, metadata={})


def received(state: NotebookState) -> Callable[[Task, Any, Any], None]:
    def show(task: Task, value: Any, attachment: Any) -> None:
        place = getattr(state.view, "place", None)
        if place is not None and attachment is not None:
            place()
        replay(state.shell, attachment)
        if task.rule.name not in state.parametric and isinstance(value, dict):
            state.bind(value, task.rule.name)
    return show
