"""Rules: a user's function registered with a Build, and how calling one fetches or builds.

Contract:
- A `Rule` wraps a user's function. `rule.task(*args, **kwargs)` binds the arguments to the
  function's signature (defaults applied, so `f(1)` and `f(1, 2)` with default 2 are one task) and
  returns a hashable `Task` whose `key` is `name/digest-of-canonical-arguments`, stable across
  processes. `repr(task)` reads like the call: `count('a.txt')`.
- Calling a rule inside a running rule body is a tracked fetch (the caller suspends); elsewhere it
  builds the task incrementally and returns its value.
- Shipped to a worker (executors/worker.py), a rule pickles as `rule_stub(fn, name, policy)`: there
  it is a Rule of `ELSEWHERE` with the same `task()`, whose calls the worker's recorder serves.
Tasks are engine/task.py's, rule versions engine/version.py's.
"""
from __future__ import annotations

import functools
import inspect
import keyword
import os
import reprlib
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Union

from ..errors import OutsideRuleError, RuleError, UnknownTargetError
from ..store.serialisation import UnserializableValue, hash_bytes
from .arguments import encode_args
from .task import Task
from .trace import current

if TYPE_CHECKING:
    from ..build import Build

__all__ = ["Rule", "Target", "rule_stub", "resolve_target", "ELSEWHERE", "POLICIES"]

POLICIES = ("persist", "memory", "none")
_PLAIN_REPR = (str, int, float, bool, type(None), bytes)


def _arg_repr(value: Any) -> str:
    if type(value) in _PLAIN_REPR or isinstance(value, os.PathLike):
        return repr(value)
    return reprlib.repr(value)


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if type(value) in _PLAIN_REPR and type(value) is type(default):
        return bool(value == default)
    return False


class Rule:
    """A user's function registered with a Build."""

    def __init__(self, fn: Callable, build: Build | _Elsewhere, name: str | None = None, policy: str = "persist",
                 executor: Any = None, timeout: float | None = None, retries: int = 0):
        if not callable(fn):
            raise RuleError(f"@rule needs a function, got {type(fn).__name__}")
        if policy not in POLICIES:
            raise RuleError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        name = name or getattr(fn, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise RuleError(f"rule name {name!r} is not a Python identifier; pass name='...'")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            raise RuleError(f"rule {name}: timeout={timeout!r}: give seconds, more than 0")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise RuleError(f"rule {name}: retries={retries!r}: give a whole number, 0 or more")
        self.fn = fn
        self.name = name
        self.policy = policy
        self.build = build
        self.executor = executor      # None: the Build's (threads, processes, dask); see executors/
        self.timeout = float(timeout) if timeout is not None else None
        self.retries = retries
        # called here with (task, value, attachment) when a body that ran elsewhere returns
        self.received: Callable[[Task, Any, Any], None] | None = None
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError):
            raise RuleError(f"rule {name}: cannot read the signature of {fn!r}") from None
        functools.update_wrapper(self, fn)
        params = list(self.signature.parameters.values())
        # positional calls of a plain signature bind without inspect (the common, hot case)
        self._plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._defaults = [p.default for p in params]

    def __repr__(self) -> str:
        return f"<rule {self.name} policy={self.policy}>"

    def __reduce__(self) -> tuple:
        """Shipped to a worker (executors/worker.py), a rule is its function and name: there it is a stub
        whose calls are served from the values sent with the body."""
        return rule_stub, (self.fn, self.name, self.policy)

    def task(self, *args: Any, **kwargs: Any) -> Task:
        n = len(args)
        if self._plain and not kwargs and n <= len(self._defaults) and all(
                d is not inspect.Parameter.empty for d in self._defaults[n:]):
            pos: tuple = args + tuple(self._defaults[n:])
            kw: dict = {}
            text = None
        else:
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise RuleError(f"{self.name}{self.signature}: {e}") from None
            bound.apply_defaults()
            pos, kw = bound.args, bound.kwargs
            text = self._call_repr(bound)
        try:
            encoded = encode_args((pos, kw))
        except UnserializableValue as e:
            raise RuleError(f"{self.name}: {e}; task arguments must be picklable") from None
        key = f"{self.name}/{hash_bytes(encoded.encode())[:20]}"
        if text is None:
            text = self._plain_repr(pos)
        return Task(self, pos, kw, key, encoded, text)

    def _plain_repr(self, pos: tuple) -> str:
        """`_call_repr` for a plain signature, without building BoundArguments."""
        shown: list[str] = []
        keyword_only = False
        for name, value, default in zip(self.signature.parameters, pos, self._defaults):
            if default is not inspect.Parameter.empty and _is_default(value, default):
                keyword_only = True
            elif keyword_only:
                shown.append(f"{name}={_arg_repr(value)}")
            else:
                shown.append(_arg_repr(value))
        return f"{self.name}({', '.join(shown)})"

    def accepts(self, args: tuple, kwargs: dict) -> bool:
        if self._plain and not kwargs:
            return len(args) == len(self._defaults)
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError:
            return False
        return True

    def task_from_encoded(self, key: str, encoded: str, text: str) -> Task:
        return Task(self, None, None, key, encoded, text)

    def _call_repr(self, bound: inspect.BoundArguments) -> str:
        shown: list[str] = []
        keyword_only = False
        params = self.signature.parameters
        for name, value in bound.arguments.items():
            p = params[name]
            if p.kind is p.VAR_POSITIONAL:
                shown.extend(_arg_repr(v) for v in value)
            elif p.kind is p.VAR_KEYWORD:
                shown.extend(f"{k}={_arg_repr(v)}" for k, v in value.items())
            elif p.default is not p.empty and _is_default(value, p.default):
                keyword_only = True
            elif keyword_only or p.kind is p.KEYWORD_ONLY:
                shown.append(f"{name}={_arg_repr(value)}")
            else:
                shown.append(_arg_repr(value))
        return f"{self.name}({', '.join(shown)})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task = self.task(*args, **kwargs)
        rec = current.get()
        if rec is not None and rec.scheduler.rules_owner is self.build:
            return rec.scheduler.fetch_values(rec, [task])[0]
        return self.build.build(task)[0]

    def map(self, *iterables: Any) -> list[Any]:
        """Fetch `rule(*args)` for each argument tuple, concurrently; inside a rule, one tracked group."""
        tasks = [self.task(*a) for a in zip(*iterables)]
        rec = current.get()
        if rec is not None and rec.scheduler.rules_owner is self.build:
            return rec.scheduler.fetch_values(rec, tasks)
        return self.build.build(*tasks)


class _Elsewhere:
    """Stands for the Build in a worker: stub rules and the worker's recorder agree on it."""

    def __repr__(self) -> str:
        return "<the kernel's Build>"

    def build(self, *tasks: Task) -> NoReturn:
        """A stub rule called in a worker where no body runs (the worker's recorder serves calls)."""
        raise OutsideRuleError(f"{tasks[0]!r} is a rule of the kernel's Build: in a worker it can only be "
                               "called inside a rule body")


ELSEWHERE = _Elsewhere()

# what `Build.build`, `why`, `status`... take: a Task, a Rule (its task without arguments) or a rule's name
Target = Union[Task, Rule, str]


def rule_stub(fn: Any, name: str, policy: str) -> Rule:
    """A Rule in a worker, made when one is unpickled there (Rule.__reduce__): the same `task()`
    (keys are identical); its calls are served by the worker's recorder (executors/worker.py)."""
    return Rule(fn, ELSEWHERE, name=name, policy=policy)


def resolve_target(rules: dict[str, Rule], name: str) -> Rule:
    try:
        return rules[name]
    except KeyError:
        known = ", ".join(sorted(rules)) or "none yet"
        raise UnknownTargetError(f"no rule named {name!r} (rules: {known})") from None
