"""The text form of the live build view, for terminal IPython, plain scripts and the CLI: a
tqdm-like line on stderr. A view, not engine: it writes to its stream and only reads
`Build.progress()`.

Contract:
- `TextProgress(stream=sys.stderr, summary=True, delay=0.3, interval=0.25, names=str)` is a
  build watcher (`Build.watch`). While a build runs longer than `delay`, a ticker thread redraws
  one line (a bar, tasks checked of those known, ran/reused/failed, the longest-running task and
  its elapsed time; tasks named by `names`: the notebook's `clean` for `clean()`) at most once per
  `interval`, in place (`\\r`) on a terminal. On a stream that is not a terminal it writes a plain
  line at most every `plain_interval` seconds instead.
- When the build ends the ticker is stopped and joined before the last write: the line is
  cleared and, with `summary`, the report's one line (or why the build stopped) is written; with
  `targets` too, it starts with the build's targets (`clean: ran 1, reused 1, ...`), so that a log
  of many builds (`nbbuild run`) says which line is which. A build shorter than `delay` writes
  nothing but that summary.
- `line(progress, width)` is the text of one snapshot, used by the widget's plain-text form too.
- `own_stderr()`: this process's own stderr as a stream, also in a Jupyter kernel (which sends
  fd 2 to the cell's output): where a kernel that `nbbuild run` started draws the line.
- `wanted(progress, setting)`: whether a Build shows this view (its `progress=` argument): True or
  False as given; None follows the setting (NBBUILD_PROGRESS as read, settings.py) when there is
  one, else yes when stderr is a terminal and no Jupyter kernel runs in this process.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import IO, Any, Callable

from .formatting import seconds_text
from .listeners import Listener
from .progress import Progress

__all__ = ["TextProgress", "line", "bar", "wanted", "own_stderr"]


def wanted(progress: bool | None, setting: bool | None = None) -> bool:
    if progress is not None:
        return bool(progress)
    if setting is not None:
        return setting
    try:
        terminal = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return terminal and "ipykernel" not in sys.modules


def own_stderr() -> IO[str]:
    """ipykernel points fd 2 at a pipe into the cell's output, and its `sys.stderr.fileno()` is a
    copy of the original: the terminal (or log) of the process that started the kernel. Elsewhere
    (and where ipykernel leaves fd 2 alone, so that fileno() is not offered) it is fd 2 itself."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr


def bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, int(round(fraction * width))))
    return "█" * filled + "░" * (width - filled)


def _seconds(s: float) -> str:
    return seconds_text(s, places=1)      # a line that changes several times a second: one decimal


def line(p: Progress, width: int = 100, names: Callable[[str], str] = str) -> str:
    """One snapshot as one line of at most `width` characters."""
    if p.done:
        return p.summary or f"build stopped: {p.error}"
    counts = f"ran {p.ran}, reused {p.reused}" + (f", failed {p.failed}" if p.failed else "")
    text = f"nbbuild {bar(p.fraction)} {p.checked}/{p.known} ({counts}) {_seconds(p.elapsed)}"
    if p.running:
        now = p.running[0]
        more = f" +{len(p.running) - 1}" if len(p.running) > 1 else ""
        text += f" · running {names(now.task)} {_seconds(now.seconds)}{more}"
    return text if len(text) <= width else text[:width - 1] + "…"


class TextProgress(Listener):
    def __init__(self, stream: IO[str] | None = None, summary: bool = True, delay: float = 0.3,
                 interval: float = 0.25, plain_interval: float = 5.0, names: Callable[[str], str] = str,
                 targets: bool = False):
        self.stream, self.names, self.targets = stream, names, targets
        self.summary, self.delay, self.interval, self.plain_interval = summary, delay, interval, plain_interval
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._drawn = False

    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stderr

    def _tty(self) -> bool:
        try:
            return self._out().isatty()
        except (AttributeError, ValueError):
            return False

    def started(self, build: Any) -> None:
        self._stop.clear()
        self._drawn = False
        self._ticker = threading.Thread(target=self._tick, args=(build,), name="nbbuild-progress", daemon=True)
        self._ticker.start()

    def _tick(self, build: Any) -> None:
        tty = self._tty()
        if self._stop.wait(self.delay):
            return
        last = ""
        while True:
            p = build.progress()
            if p is None or p.done:
                return
            text = line(p, self._width(), self.names)
            if text != last:
                self._write(("\r" + text + "\x1b[K") if tty else text + "\n")
                self._drawn, last = True, text
            if self._stop.wait(self.interval if tty else self.plain_interval):
                return

    def _width(self) -> int:
        try:
            import shutil
            return max(40, shutil.get_terminal_size((100, 20)).columns - 1)
        except (OSError, ValueError):
            return 100

    def _write(self, text: str) -> None:
        try:
            out = self._out()
            out.write(text)
            out.flush()
        except (OSError, ValueError):   # a closed or broken stream: progress is not worth an error
            pass

    def finished(self, build: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._drawn and self._tty():
            self._write("\r\x1b[K")
        p = build.progress()
        if self.summary and p is not None:
            lead = ", ".join(p.targets) + ": " if self.targets and p.targets else ""
            self._write(self.names(lead + line(p)) + "\n")
