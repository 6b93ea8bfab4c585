"""The text form of the build view (report/console.py): a line redrawn in place on a terminal."""
from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import textwrap
import time

import pytest

import nbbuild
from nbbuild.report.console import TextProgress, line
from nbbuild.report.progress import Progress, TaskRow
from waiting import wait_until


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def slow_rules(b, calls, until=lambda: True, what="nothing"):
    """raw, and slow reading it; slow's body runs until `until()` holds: until the view has
    written what the test looks for while a body runs (with a deadline)."""
    @b.rule
    def raw():
        calls.append("raw")
        return list(range(5))

    @b.rule
    def slow():
        data = raw()
        calls.append("slow")
        wait_until(until, what)
        return sum(data)
    return slow


def running_draws(out: io.StringIO) -> list[str]:
    return [d for d in out.getvalue().split("\r") if d.startswith("nbbuild ") and "· running slow() " in d]


def test_on_a_terminal_the_line_is_redrawn_in_place_then_replaced_by_the_summary(b, calls):
    out = Terminal()
    b.watch(TextProgress(out, delay=0.05, interval=0.05))
    assert slow_rules(b, calls, lambda: len(running_draws(out)) >= 3, "three draws")() == 10
    assert calls == ["raw", "slow"]
    text = out.getvalue()
    draws = [d for d in text.split("\r") if d.startswith("nbbuild ")]
    assert len(draws) >= 3                                   # redrawn while the body ran
    assert all(d.endswith("\x1b[K") for d in draws)          # each clears what the last left
    # (the last draw may come after slow() finished, before the build's end stops the ticker)
    assert any("1/2 (ran 1, reused 0) " in d and "· running slow() " in d for d in draws)
    assert text.endswith("\r\x1b[K" + str(b.report) + "\n")  # cleared, then the one line


def test_a_short_build_writes_only_its_summary(b, calls):
    out = Terminal()
    b.watch(TextProgress(out, delay=5.0))
    slow_rules(b, calls)()
    assert out.getvalue() == str(b.report) + "\n"


def test_without_a_summary_a_short_build_writes_nothing(b, calls):
    out = Terminal()
    b.watch(TextProgress(out, summary=False, delay=5.0))
    slow_rules(b, calls)()
    assert out.getvalue() == ""


def test_on_a_stream_that_is_not_a_terminal_lines_are_plain_and_rare(b, calls):
    out = io.StringIO()
    b.watch(TextProgress(out, delay=0.05, interval=0.01, plain_interval=10.0))
    slow_rules(b, calls, lambda: out.getvalue(), "the first line")()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[0].startswith("nbbuild ") and lines[1] == str(b.report)


def test_a_line_names_the_longest_running_task_and_fits_the_width():
    p = Progress(("top()",), known=40, checked=10, ran=3, reused=7, failed=1, skipped=0, elapsed=2.5,
                 running=(TaskRow("k1", "fit(alpha=0.5)", "running", 2.0), TaskRow("k2", "raw()", "running", 0.1)),
                 rows=(), complete=True)
    text = line(p, width=200)
    assert text == "nbbuild █████░░░░░░░░░░░░░░░ 10/40 (ran 3, reused 7, failed 1) 2.5 s · running fit(alpha=0.5) 2.0 s +1"
    assert len(line(p, width=50)) == 50 and line(p, width=50).endswith("…")


# a body that runs until the test has seen its line: until the file `go` is in its folder
UNTIL_GO = "deadline = time.monotonic() + 60\nwhile not os.path.exists('go') and time.monotonic() < deadline:\n    time.sleep(0.01)\n"


def in_a_terminal(argv: list[str], cwd, go_once: bytes) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as its stdin, stdout and stderr; (exit code, what it wrote).
    Once it has written `go_once`, the file `go` is made in `cwd` (see UNTIL_GO)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(nbbuild.__file__)), "TERM": "xterm"}
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=cwd,
                            close_fds=True)
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:        # it exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if go_once in seen and not (cwd / "go").exists():
                (cwd / "go").touch()
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    return proc.returncode, seen.decode("utf-8", "replace")


def test_a_plain_script_on_a_terminal_shows_the_line_on_stderr(tmp_path):
    """`Build()` in a script, with nothing set, draws the line when stderr is a terminal."""
    script = tmp_path / "pipeline.py"
    script.write_text(f"import os, time, nbbuild\n"
                      f"b = nbbuild.Build({str(tmp_path / 'store')!r})\n"
                      "@b.rule\n"
                      "def slow():\n"
                      + textwrap.indent(UNTIL_GO, "    ") +
                      "    return 1\n"
                      "print('value', slow())\n")
    code, text = in_a_terminal([sys.executable, str(script)], tmp_path, b"running slow() ")
    assert code == 0, text
    assert "\rnbbuild " in text and "running slow() " in text
    assert "ran 1, reused 0, failed 0 in " in text and "value 1" in text


def test_terminal_ipython_shows_the_line_and_prints_the_summary_once(tmp_path):
    body = "import os, time\n" + UNTIL_GO + "slow = 1\n"
    (tmp_path / "cells.ipy").write_text("%load_ext nbbuild\n"
                                        f"get_ipython().run_cell_magic('rule', 'slow --lazy', {body!r})\n"
                                        "%build slow\n"
                                        "print('bound', slow)\n")
    code, text = in_a_terminal([sys.executable, "-m", "IPython", "--no-banner", "--quick", "--colors=nocolor",
                                "cells.ipy"], tmp_path, b"running slow ")
    assert code == 0, text
    assert "\rnbbuild " in text and "running slow " in text         # the live line, on stderr, as named there
    assert text.count("ran 1, reused 0, failed 0 in ") == 1, text   # the summary once (the magic's)
    assert "bound 1" in text


@pytest.mark.parametrize("setting, shown", [("1", True), ("0", False), ("", False)])
def test_nbbuild_progress_turns_the_line_on_or_off_where_stderr_is_no_terminal(tmp_path, setting, shown):
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(f"""
        import nbbuild
        b = nbbuild.Build({str(tmp_path / 'store')!r})
        @b.rule
        def answer():
            return 42
        print("value", answer())
    """))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(nbbuild.__file__)), "NBBUILD_PROGRESS": setting}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout == "value 42\n", done.stderr
    assert done.stderr.startswith("ran 1, reused 0, failed 0 in ") == shown, done.stderr
    assert (done.stderr == "") == (not shown)


def test_a_bad_nbbuild_progress_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("NBBUILD_PROGRESS", "loud")
    with pytest.raises(nbbuild.RuleError, match=r"^NBBUILD_PROGRESS='loud': use 1 \(show builds on stderr\) or 0"):
        nbbuild.Build(tmp_path / "store")
