"""Every exception nbbuild raises.

Contract: all derive from `NbbuildError`, except `Cancelled`, a BaseException (see there). Messages are one line that says what is wrong and what
to do; the notebook layer shows `str(error)` and nothing else for these.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .engine.task import Task

__all__ = ["NbbuildError", "BuildError", "CycleError", "RuleError", "UnknownTargetError", "OutsideRuleError",
           "Cancelled", "SettingError", "CommandUsageError", "CommandFailed",
           "SharedStoreError", "SharedUnreachable"]


class NbbuildError(Exception):
    """Base of every nbbuild error."""


class RuleError(NbbuildError):
    """A malformed rule: bad name, bad policy, arguments that do not fit its signature."""


class UnknownTargetError(NbbuildError, LookupError):
    """A target that no rule produces."""


class OutsideRuleError(NbbuildError):
    """A call that only means something inside a running rule body, made outside one
    (`nbbuild.output(path)`: which rule's output would the file be?)."""


class BuildError(NbbuildError):
    """A rule failed. `task` is the failed Task, `chain` the Tasks that needed it (target first,
    the failed task last). The rule's own exception is `__cause__`. `errors` lists every failure
    of the same build when several targets failed."""

    def __init__(self, task: Task, chain: Sequence[Task] = (), message: str | None = None):
        self.task = task
        self.chain = list(chain) or [task]
        self.errors: list[BaseException] = [self]     # a target's CycleError or Cancelled among them
        if message is None:
            message = f"{task!r} failed"
        needed = " → ".join(map(repr, self.chain))
        super().__init__(message if len(self.chain) < 2 else f"{message} (needed by {needed})")


class CycleError(NbbuildError):
    """Tasks that need each other. `cycle` lists the Tasks, first == last."""

    def __init__(self, cycle: Sequence[Task]):
        self.cycle = list(cycle)
        super().__init__("dependency cycle: " + " → ".join(map(repr, self.cycle))
                         + "; break it by removing one of these calls")


class SettingError(RuleError, ValueError):
    """A setting given a value it does not accept: an NBBUILD_* variable (settings.py), a Build's
    bound (`quota=`, `min_free=`, `eviction=`) or a later change of one (`%nbbuild store --quota`,
    `Store.set_policy`). The message names the setting, the value and what it accepts. Raised
    where the setting is read or changed, before anything changed. A RuleError, as a bad argument
    of a Build always was, and a ValueError."""


class CommandUsageError(NbbuildError):
    """The `nbbuild` command was given bad arguments (a missing notebook, an unknown target, a
    parameter that is not NAME VALUE): one line, exit code 2."""


class CommandFailed(NbbuildError):
    """What the `nbbuild` command ran failed (a cell, the kernel): one line, exit code 1."""


class SharedStoreError(NbbuildError):
    """A shared tier (`Build(path, shared=URL)`, NBBUILD_SHARED) that cannot be used as given: no
    team key (NBBUILD_TEAM_KEY), an unreadable key file, a location fsspec cannot open. Raised when
    the Build is made; nothing is read from or written to the shared tier."""


class SharedUnreachable(SharedStoreError):
    """The shared tier did not answer (server down, credentials refused, network cut). Never
    reaches the user from a build: the build goes on with its local tier, with one warning, and
    what it would have uploaded is uploaded later."""


class Cancelled(BaseException):
    """Raised inside rule bodies (at a `fetch`, a rule call, a name a cell reads) whose build was
    interrupted. A BaseException, as trio's `Cancelled` is, so that a body's own `except Exception`
    does not swallow it: a body that guards a dependency with a fallback would otherwise return
    the fallback, and the interrupted build would store it. A body that catches it all the same
    (`except BaseException`) is never stored, whatever it returns."""
