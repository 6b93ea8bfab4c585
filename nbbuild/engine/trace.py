"""Traces: what one run of a task read, and how a stored trace is matched again.

Contract:
- A `Trace` is immutable: the task (key, rule name, encoded arguments, repr), the rule version and
  the parts it was made of, the dependencies in the order they were fetched (grouped: one group per
  fetch call; members of a group were asked for together), each with the value hash it had, the
  result's value hash, and how long the run took.
- `record`: a `Recorder` collects a running task's dependencies; `Recorder.trace()` freezes them.
  Dependencies that are not tasks have keys beginning with `INPUT_PREFIX`: files (`FILE_PREFIX` +
  path, content hash) and environment variables (`ENV_PREFIX` + name, or `ENV_ALL` for all of
  them; environment.py), each recorded at its first read.
- Outputs: `outputs` lists the files the run wrote (outputs.py), each as (absolute path, content
  hash, hash of its stored copy or `MISSING`). They are not dependencies: a trace is matched on its
  dependencies alone, and then asked whether its files are there or can be put back. A trace
  without outputs is stored exactly as before outputs existed (12 fields); one with them has a
  13th field, and its `ident` covers them.
- `environ` lists the environment variables the run left changed, each as (name, the value it
  left, or None: it unset it), put back when the trace is reused (environment.py). A trace that
  has them has a 14th field (its 13th empty when it wrote no file), and its `ident` covers them.
  The values are kept in the trace as they are (a variable is short): a secret a body puts in the
  environment is in the store, as one it returns would be.
- Matching a stored trace again (verifying and constructive traces) is the rebuilder's:
  engine/rebuild.py `walk` and `match`.
- `attach(data)`: a running body keeps data with its run (what it displayed, say), outside its value.
- The current recorder of the running rule body is `current` (a ContextVar: per thread and per
  greenlet). Engine work sets `paused` so that nothing it opens is taken for an input. What the
  code that notes reads and writes may ask of it is `Recording`: a `Recorder` in the kernel, a
  worker's own recorder in a body run elsewhere (executors/worker.py).
"""
from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from ..store.serialisation import hash_bytes

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .state import TaskState
    from .task import Task

__all__ = ["Trace", "Recorder", "Recording", "Fetcher", "current", "attach", "FILE_PREFIX", "ENV_PREFIX", "ENV_ALL",
           "INPUT_PREFIX", "MISSING", "Output"]

# Dependencies that are not tasks: their keys begin with INPUT_PREFIX, which no task key does (a
# task key begins with its rule's name, an identifier).
INPUT_PREFIX = "@"
FILE_PREFIX = "@file:"
ENV_PREFIX = "@env:"   # an environment variable read by key (environment.py)
ENV_ALL = "@environ"   # the whole environment (iterated, copied)
MISSING = "-"          # the "hash" of a dependency that cannot be had (unknown rule, missing file)

Group = tuple[tuple[str, str], ...]
Output = tuple[str, str, str]    # (absolute path, content hash, stored copy's value hash or MISSING)
Effect = tuple[str, "str | None"]  # (environment variable, the value a run left it with, or None: unset)

# The stored form is text split by NUL-led markers: NUL occurs in none of the parts (keys and
# hashes are plain, paths cannot hold NUL, JSON and repr escape it), and splitting is several
# times faster than parsing JSON, which matters when a fresh process reads every trace at once.
_MAGIC, _F, _G, _P, _H, _E = "NBT2", "\0F", "\0G", "\0P", "\0H", "\0E"
_JSON = json.JSONEncoder(separators=(",", ":"))
_decoded_pairs: dict[str, tuple[tuple[str, str], ...]] = {}


def _json_pairs(pairs: tuple[tuple[str, str], ...]) -> str:
    return _JSON.encode(pairs)


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """Rule parts and package versions: the same text for every task of a rule version, so each
    distinct text is decoded once."""
    found = _decoded_pairs.get(text)
    if found is None:
        found = _decoded_pairs[text] = tuple(tuple(p) for p in json.loads(text))
    return found


@dataclass(frozen=True)
class Trace:
    key: str
    rule: str
    args: str
    repr: str
    version: str
    deps: tuple[Group, ...]
    result: str
    seconds: float
    parts: tuple[tuple[str, str], ...] = ()
    packages: tuple[tuple[str, str], ...] = ()
    created: float = field(default_factory=time.time, compare=False)
    outputs: tuple[Output, ...] = ()
    environ: tuple[Effect, ...] = ()

    def _cached(self, name: str, make: Callable[[], str]) -> str:
        # a frozen dataclass still has a __dict__: derived text is computed once, lazily (loading
        # thousands of traces must not pay for it)
        value = self.__dict__.get(name)
        if value is None:
            value = self.__dict__[name] = make()
        return value

    @property
    def _deps_text(self) -> str:
        return self._cached("_deps", lambda: _G.join(_P.join(k + _H + h for k, h in g) for g in self.deps))

    @property
    def _outputs_text(self) -> str:
        return _P.join(_H.join(o) for o in self.outputs)

    @property
    def _environ_text(self) -> str:
        # JSON escapes what a value may hold (a lone surrogate from an undecodable byte included)
        return _JSON.encode(self.environ)

    @property
    def ident(self) -> str:
        """Identity of what the trace says (not when): equal traces share it."""
        # without outputs, the same bytes as before outputs were recorded: stores made then keep their rows
        return self._cached("_ident", lambda: hash_bytes(
            self.version.encode(), self.result.encode(), self._deps_text.encode(),
            (_F + self._outputs_text).encode() if self.outputs else b"",
            (_E + self._environ_text).encode() if self.environ else b"")[:16])

    def encode(self) -> bytes:
        fields = [_MAGIC, self.key, self.rule, self.args, self.repr, self.version, self.result,
                  repr(float(self.seconds)), repr(float(self.created)), _json_pairs(self.parts),
                  _json_pairs(self.packages), self._deps_text]
        if self.outputs or self.environ:
            fields.append(self._outputs_text)
        if self.environ:
            fields.append(self._environ_text)
        return _F.join(fields).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Trace:
        text = data.decode() if isinstance(data, (bytes, bytearray, memoryview)) else data
        fields = text.split(_F)
        if len(fields) not in (12, 13, 14) or fields[0] != _MAGIC:
            raise ValueError("not an nbbuild trace")
        _, key, rule, args, rep, version, result, seconds, created, parts, packages, deps = fields[:12]
        outputs = tuple(tuple(o.split(_H)) for o in fields[12].split(_P)) if len(fields) > 12 and fields[12] else ()
        environ = tuple((n, v) for n, v in json.loads(fields[13])) if len(fields) == 14 else ()
        if any(len(o) != 3 for o in outputs):
            raise ValueError("not an nbbuild trace")
        tr = object.__new__(cls)   # not the frozen __init__: loading thousands of traces is hot
        tr.__dict__.update(
            key=key, rule=rule, args=args, repr=rep, version=version, result=result,
            deps=tuple([tuple([tuple(p.split(_H)) for p in g.split(_P)]) for g in deps.split(_G)]) if deps else (),
            seconds=float(seconds), created=float(created), parts=_pairs(parts), packages=_pairs(packages),
            outputs=outputs, environ=environ, _deps=deps)
        return tr

    def split(self) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """(task dependency keys, (file path, hash) pairs), computed once per trace."""
        found = self.__dict__.get("_split")
        if found is None:
            tasks, files, env = [], [], []
            for group in self.deps:
                for k, h in group:
                    if k.startswith(FILE_PREFIX):
                        files.append((k[len(FILE_PREFIX):], h))
                    elif k.startswith(INPUT_PREFIX):
                        env.append((k, h))
                    else:
                        tasks.append(k)
            found = self.__dict__["_split"] = (tuple(tasks), tuple(files))
            self.__dict__["_env"] = tuple(env)
        return found

    def environment(self) -> tuple[tuple[str, str], ...]:
        """(ENV_PREFIX + name or ENV_ALL, hash) of the environment it read, computed once."""
        if "_env" not in self.__dict__:
            self.split()
        return self.__dict__["_env"]


class Recorder:
    """Collects what one run of a task fetches and reads."""

    __slots__ = ("state", "scheduler", "groups", "files", "written", "made", "removed", "paused", "failed_dep",
                 "waited", "attachment", "cancelled", "env_set")

    def __init__(self, state: TaskState, scheduler: Scheduler):
        self.state = state
        self.scheduler = scheduler
        self.groups: list[Group] = []
        self.files: set[str] = set()
        self.written: set[str] = set()    # files it wrote to: not inputs
        self.made: set[str] = set()       # of those, files it wrote whole: its outputs (outputs.py)
        self.removed: set[str] = set()    # files and folders it removed, not of its own making
        self.paused = 0
        self.failed_dep: TaskState | None = None
        self.waited = 0.0      # seconds spent fetching dependencies: not the task's own time
        self.attachment: Any = None
        self.cancelled = False   # the body saw its build's cancellation: never stored
        self.env_set: dict[str, Any] = {}   # environment variables it set: name -> value before (environment.py)

    def add_group(self, group: Group) -> None:
        self.groups.append(group)

    def read_file(self, path: str) -> None:
        if path in self.files or path in self.written:
            return
        self.files.add(path)
        self.paused += 1
        try:
            h = self.scheduler.file_hash(path)
        finally:
            self.paused -= 1
        self.groups.append(((FILE_PREFIX + path, h),))

    def wrote_file(self, path: str, whole: bool = True) -> None:
        """`whole`: it wrote the file from scratch (created or truncated it, or moved it into
        place); not when it appended to it or changed it in place (a log): what is there then is
        not its alone to put back."""
        self.written.add(path)
        if whole:
            self.made.add(path)

    def removed_file(self, path: str) -> None:
        """A file or folder it removed: an effect when it had not written it itself (a
        temporary file is not) and it is still gone when the body returns (outputs.keep)."""
        if path not in self.written:
            self.removed.add(path)
        self.written.add(path)

    def read_input(self, key: str, digest: str) -> None:
        """An input that is neither a task nor a file (an environment variable), as it was at
        its first read. `files` holds these keys too: they cannot clash with paths, which are
        absolute."""
        if key in self.files:
            return
        self.files.add(key)
        self.groups.append(((key, digest),))

    def wrote_input(self, key: str, name: str | None = None, before: Any = None) -> None:
        """The body set it: reading it later reads its own write, not an input. `name`, `before`:
        an environment variable, and its value before the body first set it (its effect is what
        the body leaves it with, taken when the body returns)."""
        self.files.add(key)
        if name is not None and name not in self.env_set:
            self.env_set[name] = before

    def dependencies(self) -> tuple[Group, ...]:
        if not self.written:
            return tuple(self.groups)
        drop = {FILE_PREFIX + p for p in self.written}
        kept = (tuple(d for d in g if d[0] not in drop) for g in self.groups)
        return tuple(g for g in kept if g)


class Fetcher(Protocol):
    """Who serves a running body's rule calls: the Scheduler, or in a worker its recorder."""

    @property
    def rules_owner(self) -> object:
        """Whose rules' calls are fetches here: a Build, or `rule.ELSEWHERE` in a worker."""

    def fetch_values(self, rec: Any, tasks: list[Task]) -> list[Any]: ...


class Recording(Protocol):
    """What the code that notes a running body's reads and writes asks of its recorder."""

    paused: int
    attachment: Any

    @property
    def scheduler(self) -> Fetcher: ...

    @property
    def groups(self) -> Sequence[Sequence[object]]: ...

    def read_file(self, path: str) -> None: ...

    def wrote_file(self, path: str, whole: bool = True) -> None: ...

    def removed_file(self, path: str) -> None: ...

    def read_input(self, key: str, digest: str) -> None: ...

    def wrote_input(self, key: str, name: str | None = None, before: Any = None) -> None: ...


current: contextvars.ContextVar[Recording | None] = contextvars.ContextVar("nbbuild_recorder", default=None)


def attach(data: Any) -> bool:
    """Inside a rule body: keep `data` (picklable) with this run, beside its value but not part
    of it: the value's hash, and so early cutoff, ignore it. `Build.attachment(task)` gives it back
    whenever the task's value is reused. Outside a rule body this does nothing and says False."""
    rec = current.get()
    if rec is None:
        return False
    rec.attachment = data
    return True
