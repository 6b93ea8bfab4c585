"""Building from a magic (`%%rule`, `%build`, `%nbbuild why`): its targets named as a user names
them, the build run, and what happened said in one line.

Contract:
- `task_for(state, shell, target)`: a name a rule produces (its latest version), a rule's name, or
  a call of a parametric rule (`model(alpha=0.1)`, its arguments evaluated in the namespace) is
  that Task; anything else is one UsageError line.
- `build(state, shell, tasks, summary, force, workers)`: builds them, binds the outputs of each
  target that is not a parametric call, and returns the values. With `summary` the report's line
  is printed unless the live view settles into it. A value that cannot be stored is said on
  stderr with what to do (the cell's names to blame, the quota, the disk). A failed or
  interrupted build shows the rule's own frames (`show_own_frames`), not the engine's, then one
  UsageError line.
"""
from __future__ import annotations

import ast
import sys
from typing import TYPE_CHECKING, Any

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from ..errors import BuildError, CycleError, NbbuildError
from .cells import OWN
from .graph import label

if TYPE_CHECKING:
    from ..engine.task import Task
    from .state import NotebookState

__all__ = ["task_for", "build", "show_own_frames"]


def task_for(state: NotebookState, shell: InteractiveShell, target: str) -> Task:
    """A target: a name a rule produces, a rule's name, or a call of a parametric rule."""
    if "(" not in target:
        rule = state.rule_for(target)
        try:
            return rule.task()
        except NbbuildError as e:   # a parametric rule named without its arguments
            raise UsageError(f"{e}; name a call: {target}(...)") from None
    try:
        call = ast.parse(target, mode="eval").body
    except SyntaxError:
        raise UsageError(f"%build: {target!r} is neither a name nor a call") from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise UsageError(f"%build: {target!r} is neither a name nor a call of a rule")
    rules = state.build.rules
    rule = rules.get(call.func.id) or rules.get(state.versions.producer(call.func.id) or "")
    if rule is None:
        raise UsageError(f"%build: no rule named {call.func.id!r}")
    ns = shell.user_ns
    try:
        args = [eval(compile(ast.Expression(a), "<target>", "eval"), ns) for a in call.args]
        kwargs: dict[str, Any] = {}
        for k in call.keywords:
            value = eval(compile(ast.Expression(k.value), "<target>", "eval"), ns)
            if k.arg is None:       # **mapping, as in the call itself
                kwargs.update(value)
            else:
                kwargs[k.arg] = value
    except Exception as e:  # the user's argument expressions: any error is theirs, in one line
        raise UsageError(f"%build: the arguments of {target!r} failed: {type(e).__name__}: {e}") from None
    try:
        return rule.task(*args, **kwargs)
    except NbbuildError as e:
        raise UsageError(label(str(e))) from None


def build(state: NotebookState, shell: InteractiveShell, tasks: list[Task], summary: bool, force: bool = False,
          workers: int | None = None) -> list[Any]:
    """Build `tasks` from a magic: bind their outputs (a parametric call's value is returned only),
    say the report's line unless the live view settles into it, say what could not be stored, and
    turn every failure into one UsageError line after the rule's own frames."""
    b = state.build
    before = b.report
    try:
        values = b.build(*tasks, force=force, workers=workers)
    except CycleError as e:
        raise UsageError(label(str(e))) from None
    except KeyboardInterrupt as e:
        show_own_frames(shell, e)
        raise UsageError("build interrupted: nothing it was running was stored; what finished is kept, "
                         "and the next %build goes on from there") from None
    except BuildError as e:
        if e.__cause__ is not None:
            show_own_frames(shell, e.__cause__)
        if b.report is not before and summary and not _view_says_it(state):
            print(label(str(b.report)))
        raise UsageError(label(str(e))) from None
    if summary and b.report is not None and not _view_says_it(state):
        print(label(str(b.report)))
    _say_unstored(state, tasks, values)
    for task, value in zip(tasks, values):
        if task.rule.name not in state.parametric:
            state.bind(value, task.rule.name)
    return values

def _view_says_it(state: NotebookState) -> bool:
    """The live build view settles into the report's line: printing it too would say it twice."""
    return bool(getattr(state.view, "shows_summary", False))

def show_own_frames(shell: InteractiveShell, error: BaseException) -> None:
    """The traceback of a rule's error or interrupt from the cell's frames on, not the engine's."""
    tb = error.__traceback__
    while tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("nbbuild"):
        tb = tb.tb_next
    if tb is not None:
        shell.showtraceback((type(error), error, tb))
        return
    for note in getattr(error, "__notes__", ()):   # a body that failed in a worker: its own frames
        if note.startswith("Traceback (most recent call last), in the worker"):
            print(note, file=sys.stderr)

def _say_unstored(state: NotebookState, tasks: list[Task], values: list[Any]) -> None:
    """A value that cannot be stored is rebuilt after every restart: say so, and say which
    of the cell's names is to blame when it is a target."""
    report = state.build.report
    unstored = {t.task: t.unstored for t in report.tasks if t.unstored} if report is not None else {}
    for text, reason in unstored.items():
        culprits = []
        for task, value in zip(tasks, values):
            if repr(task) == text and isinstance(value, dict):
                culprits = [k for k, v in value.items() if not k.startswith(OWN) and not _picklable(v)]
        if culprits or "pickle" in reason:
            what = f"{', '.join(culprits)} cannot be pickled" if culprits else reason
            advice = "keep such objects inside a function, or `del` them at the end of the cell"
        elif "quota" in reason:
            what, advice = reason, "raise the quota (%nbbuild store --quota SIZE) to keep it"
        else:
            what, advice = reason, "free disk space, then build again to store it"
        print(f"nbbuild: {label(text)} is not stored ({what}): it runs again after a restart; {advice}",
              file=sys.stderr)



def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
        return True
    except Exception:  # pickling runs the object's own code: anything may fail
        return False
