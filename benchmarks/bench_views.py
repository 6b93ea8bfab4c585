"""What the live build view costs a 10,000-task build: the widget in a real Jupyter kernel, and the
text line in a plain process, each against the same build with no view.

The issue's target: the live build view costs a 10,000-task build under 5% of its time.

Graph (10,101 tasks): `top()` sums 100 `mid(j)`, each summing 100 `leaf(i)`; a leaf's body is
`sum(range(WORK)) + i` (--work; tens to a hundred µs). Three builds of it:
  run      policy "none": every build executes all 10,101 tasks (--work, about 1-2 s here);
  run-tiny the same with a 1 µs body (work 200): the engine's own cost only, about 0.2 s, so the
           view's fixed cost (creating and settling its widgets) weighs most;
  noop     policy "persist", after one build that stored everything: each timed build is a
           no-op re-check of the 10,101 tasks in the same process (the fast path, ~40 ms).

kernel  A real ipykernel (jupyter_client KernelManager, kernel "python3", cwd a temp dir,
        NBBUILD_DIR and XDG_CONFIG_HOME in temp dirs). `%load_ext nbbuild`; the rules are defined
        with the Python API on the notebook's Build (`get_ipython()._nbbuild_state.build`,
        workers=1). Each timed build is its own execute request; the kernel times
        `b.build(top.task())` with perf_counter (started/finished, widget creation, the ticker and
        its join are all inside). The view is switched with `b.unwatch(state.view)` /
        `b.watch(state.view)`. The client drains iopub while each cell runs, so every widget
        message really goes out over ZMQ; it counts the `comm_msg` updates (data.method ==
        "update") and `comm_open`s whose parent is that execute request.
text    A plain Python process (no kernel): `nbbuild.Build(..., workers=1, progress=False)` with
        `TextProgress(stream=...)` watched or not, drawing to /dev/null through a wrapper whose
        isatty() is True (so it redraws in place every 0.25 s after its 0.3 s delay).

Rounds: after 2 warm-up builds, --pairs (for run; --pairs-fast for the others) pairs of (no view,
view), the order alternating from pair to pair (off,on / on,off / ...), a gc.collect() (untimed)
before each build. Reported: the median seconds of each, the ratio of the medians, the median of
the per-pair ratios and differences, best against best, the same for the process's CPU time, and
(kernel) the CPU each thread spent during the build (/proc/self/task/*/schedstat), the ticker
being what is left once the surviving threads are counted. Two diagnostic builds (not in the
ratios), one with the widget and one without, wrap the view's methods and the Tracker's
per-task step to measure the CPU (thread_time) of each on each thread; with the thread table they
give an accounted cost of the widget, next to the A/B figure (which on this VM is the noisier).

Run: .venv/bin/python benchmarks/bench_views.py [--markdown] [--pairs 15] [--pairs-fast 21] [--work 8000] [--raw]
tqdm is not a dependency of the project (and not installed in its venv), so it is not a peer here.
"""
from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

FAN = 100                 # top -> FAN mids -> FAN leaves each: FAN*FAN + FAN + 1 tasks
TASKS = FAN * FAN + FAN + 1
TIMEOUT = 300

RULES = '''
@b.rule(policy="{policy}")
def {p}leaf(i):
    return sum(range({work})) + i

@b.rule(policy="{policy}")
def {p}mid(j):
    return sum({p}leaf(j * {fan} + k) for k in range({fan}))

@b.rule(policy="{policy}")
def {p}top():
    return sum({p}mid(j) for j in range({fan}))
'''

# the builds measured: (name, rule prefix, policy, leaf work); see the module's docstring
def variants(work: int) -> list[tuple[str, str, str, int]]:
    return [("run", "r_", "none", work), ("run-tiny", "t_", "none", 200), ("noop", "p_", "persist", work)]


TIMED = '''
import gc, json, os, threading, time
def _threads_cpu():
    """(CPU seconds, timeslices) each live thread of this process has run, by name (/proc/self/task/*/schedstat)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, _, slices = f.read().split()
            out[names.get(int(tid), "native " + tid)] = (int(run) / 1e9, int(slices))
        except (OSError, ValueError):
            pass
    return out
def _timed(target, on, view):
    (b.watch if on else b.unwatch)(view)
    assert (view in b.listeners) == on, b.listeners        # besides the notebook's replay
    gc.collect()
    before = _threads_cpu()
    c0, t0 = time.process_time(), time.perf_counter()
    b.build(target)
    s, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = _threads_cpu()
    threads = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after
               if k in before and after[k][1] > before[k][1]}
    threads["(ended: the ticker)"] = (max(0.0, cpu - sum(c for c, _ in threads.values())), 0)
    r = b.report
    return json.dumps({"s": s, "cpu": cpu, "threads": threads, "tasks": len(r.rows[0]), "ran": len(r.executed),
                       "reused": len(r.reused), "failed": len(r.failed)})
'''

# the ticker's costs, measured by wrapping (on instances, in this kernel only) what it calls
DIAG = '''
import threading, time as _time
def _diag(target, view, on=True):
    from nbbuild import progress as _progress
    cost = {}
    def wrap(name, fn):
        def timed(*a, **k):
            c0, w0 = _time.thread_time(), _time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                c = cost.setdefault(name + " @ " + threading.current_thread().name, [0, 0.0, 0.0])
                c[0] += 1; c[1] += _time.thread_time() - c0; c[2] += _time.perf_counter() - w0
        return timed
    take = _progress.Tracker._take_finished
    _progress.Tracker._take_finished = wrap("Tracker._take_finished", take)
    b.progress = wrap("Build.progress (Tracker.snapshot)", b.progress)
    view._push = wrap("BuildView._push", view._push)
    view.started = wrap("BuildView.started", view.started)
    view.finished = wrap("BuildView.finished", view.finished)
    (b.watch if on else b.unwatch)(view)
    try:
        gc.collect()
        t0 = _time.perf_counter()
        b.build(target)
        s = _time.perf_counter() - t0
    finally:
        _progress.Tracker._take_finished = take
        for o, n in ((b, "progress"), (view, "_push"), (view, "started"), (view, "finished")):
            del o.__dict__[n]
    return json.dumps({"s": s, "cost": cost})
'''


# ---------------------------------------------------------------- statistics

def summary(pairs: list[tuple[float, float]], cpu: list[tuple[float, float]]) -> dict:
    """(off, on) seconds per pair, wall and process CPU."""
    off = [a for a, _ in pairs]
    on = [b for _, b in pairs]
    return {"off": statistics.median(off), "on": statistics.median(on),
            "ratio": statistics.median(on) / statistics.median(off),
            "paired": statistics.median(b / a for a, b in pairs),
            "delta": statistics.median(b - a for a, b in pairs),
            "best": min(on) / min(off), "best_off": min(off), "best_on": min(on),
            "cpu_paired": statistics.median(b / a for a, b in cpu),
            "cpu_delta": statistics.median(b - a for a, b in cpu)}


def rounds(pairs: int, warmup: int, run) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """`run(on)` -> (wall seconds, CPU seconds). Warm-up builds (both modes), then `pairs` (off, on)
    pairs whose order alternates from one pair to the next; returns the wall and the CPU pairs."""
    for i in range(warmup):
        run(i % 2 == 1)
    wall, cpu = [], []
    for i in range(pairs):
        first = i % 2 == 1           # pair 0: off then on; pair 1: on then off; ...
        a = run(first)
        c = run(not first)
        off, on = (c, a) if first else (a, c)
        wall.append((off[0], on[0]))
        cpu.append((off[1], on[1]))
    return wall, cpu


# ---------------------------------------------------------------- the kernel

class Kernel:
    def __init__(self, root: str):
        from jupyter_client import KernelManager
        self.cwd = os.path.join(root, "cwd")
        os.makedirs(self.cwd)
        env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND",)}
        env.update(NBBUILD_DIR=os.path.join(root, "store"), XDG_CONFIG_HOME=os.path.join(root, "xdg"),
                   IPYTHONDIR=os.path.join(root, "ipython"), PYTHONUNBUFFERED="1")
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=self.cwd, env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def execute(self, code: str, expr: str | None = None) -> dict:
        """Run `code`, draining iopub until the kernel is idle again; returns the reply, the
        value of `expr` (a str), the counts of this request's iopub messages by type, the times
        of its widget updates, and the cell's wall time as the client saw it."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code, user_expressions={"x": expr} if expr else {})
        counts: dict[str, int] = {}
        updates: list[datetime] = []
        errors = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=TIMEOUT)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "comm_msg":
                kind = f"comm_msg:{content.get('data', {}).get('method')}"
                if kind == "comm_msg:update":
                    updates.append(msg["header"]["date"])
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))
            elif kind == "stream" and content["name"] == "stderr":
                errors.append(content["text"])
            counts[kind] = counts.get(kind, 0) + 1
        wall = time.perf_counter() - t0
        while True:
            reply = self.kc.get_shell_msg(timeout=TIMEOUT)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        content = reply["content"]
        if content["status"] != "ok":
            raise RuntimeError(f"kernel cell failed:\n{code}\n" + "\n".join(errors))
        value = None
        if expr:
            x = content["user_expressions"]["x"]
            if x["status"] != "ok":
                raise RuntimeError(f"{expr}: {x}")
            value = ast.literal_eval(x["data"]["text/plain"])
        return {"value": value, "counts": counts, "updates": updates, "wall": wall, "stderr": errors}

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def kernel_part(args, root: str) -> dict:
    k = Kernel(root)
    try:
        k.execute("%load_ext nbbuild")
        info = k.execute("import sys, ipykernel, ipywidgets\n_state = get_ipython()._nbbuild_state\n"
                         "b = _state.build\nb.workers = 1\n"
                         "_info = repr((sys.executable, ipykernel.__version__, ipywidgets.__version__, "
                         "type(_state.view).__module__ + '.' + type(_state.view).__name__, "
                         "(_state.view.first, _state.view.interval, _state.view.bar_every), "
                         "len(b.listeners)))", "_info")["value"]
        info = ast.literal_eval(info)
        k.execute(TIMED + DIAG)
        out = {"info": {"executable": info[0], "ipykernel": info[1], "ipywidgets": info[2], "view": info[3],
                        "interval": info[4], "listeners_at_start": info[5]}, "variants": {}}
        for name, p, policy, work in variants(args.work):
            k.execute(RULES.format(policy=policy, p=p, work=work, fan=FAN))
            cells = {False: [], True: []}

            def run(on: bool, p=p) -> tuple[float, float]:
                r = k.execute(f"_r = _timed({p}top.task(), {on}, _state.view)", "_r")
                v = json.loads(r["value"])
                assert v["tasks"] == TASKS and not v["failed"], v
                assert v["ran"] == (TASKS if policy == "none" else 0), v
                if not on:
                    assert not r["counts"].get("comm_open") and not r["updates"], r["counts"]
                cells[on].append({**v, "wall": r["wall"], "counts": r["counts"], "updates": r["updates"]})
                return v["s"], v["cpu"]

            first = None
            if policy == "persist":     # the one build that runs and stores everything, untimed
                r = k.execute(f"_r = _timed({p}top.task(), False, _state.view)", "_r")
                first = json.loads(r["value"])
                assert first["ran"] == TASKS, first
            pairs, cpu = rounds(args.pairs if name == "run" else args.pairs_fast, 2, run)
            on_cells = cells[True][-len(pairs):]
            off_cells = cells[False][-len(pairs):]
            ups = [len(c["updates"]) for c in on_cells]
            opens = [c["counts"].get("comm_open", 0) for c in on_cells]
            out["variants"][name] = {
                **summary(pairs, cpu), "pairs": pairs, "cpu": cpu, "work": work, "policy": policy, "first": first,
                "updates": statistics.median(ups), "updates_max": max(ups), "opens": statistics.median(opens),
                "updates_per_s": statistics.median(len(c["updates"]) / c["s"] for c in on_cells),
                "cell_paired": statistics.median(b["wall"] / a["wall"] for a, b in zip(off_cells, on_cells)),
                "cell_off": statistics.median(c["wall"] for c in off_cells),
                "cell_on": statistics.median(c["wall"] for c in on_cells),
                "update_span": statistics.median(_span(c["updates"]) for c in on_cells),
                "counts_on": on_cells[-1]["counts"],
                "threads": {"off": _threads(off_cells), "on": _threads(on_cells)},
            }
        out["diag"] = json.loads(k.execute("_d = _diag(r_top.task(), _state.view)", "_d")["value"])
        out["diag_off"] = json.loads(k.execute("_d = _diag(r_top.task(), _state.view, False)", "_d")["value"])
        out["widgets_alive"] = k.execute("import ipywidgets\n_w = len(ipywidgets.Widget.widgets)", "_w")["value"]
        return out
    finally:
        k.close()


def _threads(cells: list[dict]) -> dict[str, tuple[float, float]]:
    """Median (CPU seconds, timeslices) per thread (by name) over the builds; absent counts 0."""
    names = sorted(set().union(*(c["threads"] for c in cells)))
    return {n: (statistics.median(c["threads"].get(n, (0.0, 0))[0] for c in cells),
                statistics.median(c["threads"].get(n, (0.0, 0))[1] for c in cells)) for n in names}


def _span(dates: list) -> float:
    """Seconds from the first to the last widget update of a build (from the messages' headers)."""
    if len(dates) < 2:
        return 0.0
    d = sorted(dates)
    return (d[-1] - d[0]).total_seconds()


# ---------------------------------------------------------------- the text line, in a plain process

class TtyDevNull:
    """/dev/null that says it is a terminal (so TextProgress draws in place); counts its writes."""

    def __init__(self):
        self.f = open(os.devnull, "w")
        self.writes = 0

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.writes += 1
        return self.f.write(s)

    def flush(self) -> None:
        self.f.flush()


def text_child(args) -> None:
    """In a fresh plain process: the same rounds with TextProgress on / off; prints JSON."""
    import nbbuild
    from nbbuild.report.console import TextProgress
    assert "ipykernel" not in sys.modules
    out = {"variants": {}}
    with tempfile.TemporaryDirectory() as d:
        b = nbbuild.Build(os.path.join(d, "store"), workers=1, progress=False)
        assert b.listeners == []
        sink = TtyDevNull()
        view = TextProgress(stream=sink)
        ns = {"b": b, "__name__": "bench_views_rules"}
        for name, p, policy, work in variants(args.work):
            exec(compile(RULES.format(policy=policy, p=p, work=work, fan=FAN), f"<{name} rules>", "exec"), ns)
            target = ns[f"{p}top"].task()
            writes = []

            def run(on: bool) -> tuple[float, float]:
                (b.watch if on else b.unwatch)(view)
                gc.collect()
                w0 = sink.writes
                c0, t0 = time.process_time(), time.perf_counter()
                b.build(target)
                s, cpu = time.perf_counter() - t0, time.process_time() - c0
                r = b.report
                assert len(r.rows[0]) == TASKS and len(r.executed) == (TASKS if policy == "none" else 0)
                if on:
                    writes.append(sink.writes - w0)
                else:
                    assert sink.writes == w0
                return s, cpu

            first = None
            if policy == "persist":
                b.unwatch(view)
                t0 = time.perf_counter()
                b.build(target)
                first = {"s": time.perf_counter() - t0, "ran": len(b.report.executed)}
            pairs, cpu = rounds(args.pairs if name == "run" else args.pairs_fast, 2, run)
            w = writes[-len(pairs):]
            out["variants"][name] = {**summary(pairs, cpu), "pairs": pairs, "cpu": cpu, "work": work, "policy": policy,
                                     "first": first, "writes": statistics.median(w), "writes_max": max(w)}
        b.close()
    print(json.dumps(out))


def text_part(args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--text-child", "--work", str(args.work),
           "--pairs", str(args.pairs), "--pairs-fast", str(args.pairs_fast)]
    env = {k: v for k, v in os.environ.items() if k != "NBBUILD_DIR"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    if done.returncode:
        raise RuntimeError(f"text child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- output

def table(rows: list[list[str]], markdown: bool, left: int = 2) -> str:
    if markdown:
        head, *body = rows
        lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * left + ["--:"] * (len(head) - left)) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i >= left else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def pct(r: float) -> str:
    return f"{100 * (r - 1):+.1f}%"


def report(kern: dict, text: dict, args, elapsed: float) -> str:
    from common import revision
    out = []
    info = kern["info"]
    out.append(f"Machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
               f"Linux {platform.release()}, ipykernel {info['ipykernel']}, ipywidgets {info['ipywidgets']}, "
               f"nbbuild ({revision()})")
    out.append(f"Graph: {TASKS:,} tasks (top -> {FAN} mid -> {FAN} leaf each), workers=1. Kernel view: "
               f"{info['view']} (first update at {info['interval'][0]} s, then the text every {info['interval'][1]} s, "
               f"the bar at most every {info['interval'][2]} s). {args.pairs} pairs for 'run', "
               f"{args.pairs_fast} for the others, after 2 warm-up builds; the order alternates pair to pair.")
    out.append("")
    rows = [["view", "build", "work", "off s", "on s", "on/off", "paired", "best", "Δ ms", "cpu paired",
             "cpu Δ ms", "cell paired", "updates", "upd/s", "opens", "writes"]]
    for where, part in (("widget (kernel)", kern), ("text (plain)", text)):
        for name, v in part["variants"].items():
            kernel = "updates" in v
            rows.append([where, name, str(v["work"]), f"{v['off']:.3f}", f"{v['on']:.3f}", pct(v["ratio"]),
                         pct(v["paired"]), pct(v["best"]), f"{1000 * v['delta']:+.1f}", pct(v["cpu_paired"]),
                         f"{1000 * v['cpu_delta']:+.1f}",
                         pct(v["cell_paired"]) if kernel else "-",
                         f"{v['updates']:g}" if kernel else "-", f"{v['updates_per_s']:.1f}" if kernel else "-",
                         f"{v['opens']:g}" if kernel else "-", "-" if kernel else f"{v['writes']:g}"])
    out.append(table(rows, args.markdown))
    out.append("")
    out.append("off s / on s: median seconds of b.build() without / with the view; on/off: ratio of the "
               "medians; paired: median of the per-pair ratios; best: best on / best off; Δ ms: median of the "
               "per-pair differences; cpu: the same for the process's CPU time (all its threads) during "
               "b.build(); cell paired: 'paired' for the whole cell as the client saw it (execute request "
               "to idle); updates: widget comm_msg updates per build (median), upd/s: per second of build; "
               "opens: comm_opens (widgets created) per build; writes: TextProgress writes per build.")
    for where, part in (("kernel", kern), ("plain", text)):
        for name, v in part["variants"].items():
            if v.get("first"):
                out.append(f"{where} {name}: the first build (not in the ratios) ran {v['first']['ran']:,} tasks "
                           f"in {v['first']['s']:.2f} s")
    out.append("")
    out.append("CPU ms and timeslices (times the thread was put on a CPU) by thread of the kernel during "
               "b.build(), median over the timed builds (/proc schedstat; the ticker is the CPU left over once "
               "the surviving threads are counted):")
    trow = [["build", "thread", "off ms", "on ms", "on - off ms", "off slices", "on slices"]]
    zero = (0.0, 0)
    for name, v in kern["variants"].items():
        th = v["threads"]
        for t in sorted(set(th["off"]) | set(th["on"]), key=lambda t: -th["on"].get(t, zero)[0]):
            a, c = th["off"].get(t, zero), th["on"].get(t, zero)
            if max(a[0], c[0]) >= 0.0005:
                trow.append([name, t, f"{1000 * a[0]:.1f}", f"{1000 * c[0]:.1f}", f"{1000 * (c[0] - a[0]):+.1f}",
                             f"{a[1]:g}", f"{c[1]:g}" if t != "(ended: the ticker)" else "-"])
    out.append(table(trow, args.markdown))
    d, d_off = kern["diag"], kern["diag_off"]
    out.append("")
    out.append(f"Where the time goes: one instrumented 'run' build with the widget ({d['s']:.3f} s) and one "
               f"without ({d_off['s']:.3f} s), each call wrapped; CPU = the calling thread's thread_time. "
               f"Tracker._take_finished (the per-task part of a snapshot) is also counted inside Build.progress; "
               f"on MainThread it runs in Tracker.finish, with or without a view.")
    crow = [["view", "call @ thread", "calls", "CPU ms", "wall ms", "CPU/call ms", "CPU/build"]]
    for view, dd in (("on", d), ("off", d_off)):
        for call, (n, cpu, wall) in dd["cost"].items():
            crow.append([view, call, str(n), f"{1000 * cpu:.1f}", f"{1000 * wall:.1f}", f"{1000 * cpu / n:.2f}",
                         f"{100 * cpu / dd['s']:.2f}%"])
    out.append(table(crow, args.markdown, left=2))
    out.append("")
    cost = lambda dd, call: dd["cost"].get(call, [0, 0.0, 0.0])[1]
    run = kern["variants"]["run"]
    th = run["threads"]
    others = sum(th["on"].get(t, (0.0, 0))[0] - th["off"].get(t, (0.0, 0))[0]
                 for t in set(th["on"]) | set(th["off"]) if t != "MainThread")
    main_own = cost(d, "BuildView.started @ MainThread") + cost(d, "BuildView.finished @ MainThread")
    shifted = cost(d_off, "Tracker._take_finished @ MainThread") - cost(d, "Tracker._take_finished @ MainThread")
    own = others + main_own - shifted
    out.append(f"Accounted cost of the widget on 'run': {1000 * others:.1f} ms CPU on other threads (ticker, IOPub, "
               f"zmq) + {1000 * main_own:.1f} ms in started/finished on the build's thread - {1000 * shifted:.1f} ms "
               f"of Tracker work the ticker took over from Tracker.finish = {1000 * own:.1f} ms, "
               f"{100 * own / run['off']:.1f}% of the median build without it; the A/B above says "
               f"{1000 * run['delta']:+.1f} ms ({pct(run['paired'])}). The rest is the build's thread itself "
               f"running slower (GIL hand-offs to the ticker and the IOPub thread: see the timeslices).")
    out.append("")
    out.append(f"Widgets alive in the kernel at the end: {kern['widgets_alive']} "
               f"(each build with the view opens {kern['variants']['run']['opens']:g}).")
    out.append(f"Benchmark wall time: {elapsed:.0f} s.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=15, help="(off, on) pairs of the 'run' build")
    p.add_argument("--pairs-fast", type=int, default=21, help="pairs of the run-tiny and noop builds")
    p.add_argument("--work", type=int, default=8000, help="a leaf's body: sum(range(WORK))")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--raw", action="store_true", help="also print every pair's seconds, as JSON")
    p.add_argument("--text-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.text_child:
        text_child(args)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    t0 = time.perf_counter()
    root = tempfile.mkdtemp(prefix="nbbuild-bench-views-")
    try:
        kern = kernel_part(args, root)
        text = text_part(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(kern, text, args, time.perf_counter() - t0))
    if args.raw:
        raw = {"kernel": {k: {"pairs": v["pairs"], "cpu": v["cpu"], "counts_on": v["counts_on"], "threads": v["threads"],
                              "update_span": v["update_span"]} for k, v in kern["variants"].items()},
               "text": {k: {"pairs": v["pairs"], "cpu": v["cpu"]} for k, v in text["variants"].items()}}
        print(json.dumps(raw))


if __name__ == "__main__":
    main()
