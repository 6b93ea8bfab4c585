"""Eviction policies on a notebook-like workload: lru and gdsf against the offline optimum.

A seeded workload of notebook sessions runs on the real engine (`nbbuild.Build`, workers=1,
min_free=0) once per store: three independent datasets, each
  raw(ds)                 reads a data file: large (4-12 MB), slow (50-120 ms)
  clean(ds)               large (60% of raw), fast (8 ms); reads the global THRESHOLD
  features(ds, kind)      large (half of clean), fast (15 ms); reads the global WINDOW
  fit(ds, kind, alpha)    small (16 KB), slow (50-110 ms by kind); parametric
  summary(ds)             small (2 KB), fast (4 ms)
  plot(ds, kind, alpha)   small (150 KB), fast (25 ms)
  report()                small, fast; reads every dataset's summary
Values are numpy arrays of those sizes, durations real `time.sleep`s. Each session is a new
Build on the same store (a kernel restart: values come from the store, not memory) running a few
builds; between builds the "user" tries a new alpha, switches kind or dataset (some are visited
often, some rarely), edits THRESHOLD or WINDOW (often reverting an earlier edit), edits the code
of `fit` (a refactor: same values, so early cutoff spares the plots) or of `features` (a fix:
new values), or gets new data for a dataset (its file changes).

Recompute time of a run = the run seconds of the tasks it executed (`b.report.tasks`), minus the
same sum for a run with no quota: the time spent only because values had been evicted. It is
reported per quota (10-50% of the working set: the bytes of every distinct value the unlimited
run stored) for lru, gdsf and two offline optima, solved exactly as MILPs on the store requests
the unlimited run made (see `offline_optimum`): on its loads alone, and with the re-runs of
inputs that a miss causes (cascades) charged too. Both know the future; the second is the
tighter lower bound, and the ratios are to it.
Run: python benchmarks/bench_policies.py [--markdown] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

import nbbuild
from common import revision
from nbbuild.store.store import Store
from nbbuild.engine.trace import FILE_PREFIX

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, ".work")         # git-ignored

# ---------------------------------------------------------------- the workload

DATASETS = ("sales", "sensors", "survey")
DATASET_WEIGHTS = (0.55, 0.30, 0.15)        # how often the user turns to each
KINDS = ("lag", "roll", "fft")
KIND_WEIGHTS = (0.5, 0.3, 0.2)
ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MB = 10**6
NOISE = 0.05        # seconds: run-to-run differences of a whole run are about this big

# sizes and durations (seconds, times SCALE); rules read these plain globals, which never change
RAW_BYTES = {"sales": 12 * MB, "sensors": 8 * MB, "survey": 4 * MB}
RAW_SECONDS = {"sales": 0.12, "sensors": 0.09, "survey": 0.05}
FIT_SECONDS = {"lag": 0.05, "roll": 0.08, "fft": 0.11}
SCALE = 1.0

# what the user edits between builds: plain globals the rules read (inputs by value)
THRESHOLD = 0.5
WINDOW = 14
DATA_DIR = ""


def payload(nbytes: int, *key: Any) -> np.ndarray:
    """A value of `nbytes` whose content is a function of `key` (so equal inputs give equal
    values, and early cutoff works as it would on real data). Zeros but for the first element:
    calloc'd pages cost nothing to make, so a task's run time is its sleep, not the speed of this
    machine's page faults (which varies a lot); the store still writes and reads every byte."""
    value = np.zeros(max(1, nbytes // 8))
    value[0] = float(zlib.crc32(repr(key).encode()))
    return value


def ident(value: np.ndarray) -> float:
    return float(value.flat[0])


def work(seconds: float) -> None:
    time.sleep(seconds * SCALE)


def define(b: nbbuild.Build, fit_variant: int, features_variant: int) -> dict[str, Any]:
    """The notebook's rule cells, as run in this session (with the current code of `fit` and
    `features`). Defined the same way in every Build, so traces match across sessions."""

    @b.rule
    def raw(ds):
        with open(os.path.join(DATA_DIR, f"{ds}.csv")) as f:    # a file input, by content
            text = f.read()
        work(RAW_SECONDS[ds])
        return payload(RAW_BYTES[ds], "raw", ds, text)

    @b.rule
    def clean(ds):
        r = raw(ds)
        work(0.008)
        return payload(int(r.nbytes * 0.6), "clean", ident(r), THRESHOLD)

    def features_v1(ds, kind):
        c = clean(ds)
        work(0.015)
        return payload(c.nbytes // 2, "features", ident(c), kind, WINDOW)

    def features_v2(ds, kind):      # a fix: the values change
        c = clean(ds)
        work(0.015)
        return payload(c.nbytes // 2, "features", ident(c), kind, WINDOW, "fixed")

    features = b.rule(features_v1 if features_variant == 1 else features_v2, name="features")

    def fit_v1(ds, kind, alpha):
        f = features(ds, kind)
        work(FIT_SECONDS[kind])
        return payload(16_000, "fit", ident(f), alpha)

    def fit_v2(ds, kind, alpha):    # a refactor: the same values
        x = features(ds, kind)
        work(FIT_SECONDS[kind])
        coefficients = payload(16_000, "fit", ident(x), alpha)
        return coefficients

    fit = b.rule(fit_v1 if fit_variant == 1 else fit_v2, name="fit")

    @b.rule
    def summary(ds):
        c = clean(ds)
        work(0.004)
        return payload(2_000, "summary", ident(c))

    @b.rule
    def plot(ds, kind, alpha):
        m, s = fit(ds, kind, alpha), summary(ds)
        work(0.025)
        return payload(150_000, "plot", ident(m), ident(s))

    @b.rule
    def report():
        parts = [ident(summary(ds)) for ds in DATASETS]
        work(0.003)
        return payload(4_000, "report", *parts)

    return {"raw": raw, "clean": clean, "features": features, "fit": fit, "summary": summary,
            "plot": plot, "report": report}


@dataclass
class State:
    """What the notebook looks like at one build: parameters, code variants, data, focus."""
    threshold: float = 0.5
    window: int = 14
    fit_variant: int = 1
    features_variant: int = 1
    data: dict[str, int] = field(default_factory=lambda: {ds: 0 for ds in DATASETS})
    focus: str = "sales"
    kind: str = "lag"
    tried: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def copy(self) -> State:
        return State(self.threshold, self.window, self.fit_variant, self.features_variant, dict(self.data),
                     self.focus, self.kind, {k: list(v) for k, v in self.tried.items()})

    def alphas(self) -> list[float]:
        return self.tried.setdefault((self.focus, self.kind), [1.0])

    def targets(self) -> list[tuple]:
        """What the user asks for: the report, the focus's summary, fits of the last three
        alphas tried and the plot of the latest."""
        recent = self.alphas()[-3:]
        return ([("report",), ("summary", self.focus)] + [("fit", self.focus, self.kind, a) for a in recent]
                + [("plot", self.focus, self.kind, recent[-1])])


ACTIONS = {"alpha": 0.30, "kind": 0.12, "dataset": 0.12, "none": 0.10, "threshold": 0.10, "window": 0.08,
           "fit code": 0.06, "features code": 0.06, "data": 0.06}


def edit(state: State, rng: random.Random) -> str:
    action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
    if action == "alpha":
        tried = state.alphas()
        fresh = [a for a in ALPHAS if a not in tried]
        a = rng.choice(fresh) if fresh else rng.choice(tried[:-1] or tried)
        if a in tried:
            tried.remove(a)             # revisited: it becomes the latest
        tried.append(a)
    elif action == "kind":
        state.kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
    elif action == "dataset":
        state.focus = rng.choices(DATASETS, weights=DATASET_WEIGHTS)[0]
    elif action == "threshold":         # mostly back and forth: reverts find their old values
        state.threshold = {0.5: 0.6, 0.6: 0.5, 0.7: 0.5}[state.threshold] if rng.random() < 0.7 else 0.7
    elif action == "window":
        state.window = rng.choice([w for w in (7, 14, 30) if w != state.window])
    elif action == "fit code":
        state.fit_variant = 3 - state.fit_variant
    elif action == "features code":
        state.features_variant = 3 - state.features_variant
    elif action == "data":
        ds = rng.choices(DATASETS, weights=DATASET_WEIGHTS)[0]
        state.data[ds] += 1
    return action


def script(seed: int, sessions: int, builds: int) -> list[list[tuple[str, State]]]:
    """Sessions of builds: (what changed before the build, the state it runs in). The first
    build of a session re-runs the notebook as it was left."""
    rng = random.Random(seed)
    state = State()
    out = []
    for _ in range(sessions):
        session = [("restart", state.copy())]
        for _ in range(builds - 1):
            session.append((edit(state, rng), state.copy()))
        out.append(session)
    return out


# ---------------------------------------------------------------- replaying it

EVENTS: list[tuple[str, str, int]] = []     # ("load" | "miss" | "put", value hash, session), in order
_RECORDING = [False]
_SESSION = [0]
_PEAK = [0]


def _install_recorder() -> None:
    """Wrap Store.load and Store.put_value to log the store requests of a run, in order."""
    load, put = Store.load, Store.put_value

    def recorded_load(self: Store, digest: str) -> tuple[bool, Any, str]:
        out = load(self, digest)
        if _RECORDING[0]:
            EVENTS.append(("load" if out[0] else "miss", digest, _SESSION[0]))
        return out

    def recorded_put(self: Store, ser: Any) -> str | None:
        out = put(self, ser)
        if _RECORDING[0]:
            EVENTS.append(("put", ser.digest, _SESSION[0]))
            # the store's size while builds run, not only after them: does it keep to its quota?
            _PEAK[0] = max(_PEAK[0], self.volume() + self.pending_bytes())
        return out

    Store.load, Store.put_value = recorded_load, recorded_put   # type: ignore[method-assign]


@dataclass
class Run:
    executed_seconds: float = 0.0
    executed: int = 0
    wall: float = 0.0
    loads: int = 0
    misses: int = 0
    peak_volume: int = 0        # the store's largest size, during or after a build
    events: list[tuple[str, str, int]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    db_bytes: int = 0


def write_data(state: State) -> None:
    for ds, version in state.data.items():
        path = os.path.join(DATA_DIR, f"{ds}.csv")
        text = f"{ds} data, version {version}\n"
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "w") as f:
            f.write(text)


def replay(plan: list[list[tuple[str, State]]], root: str, quota: int | str, policy: str,
           keep_store: bool = False) -> Run:
    """Run every session of `plan` over one fresh store; returns what it cost."""
    global THRESHOLD, WINDOW, DATA_DIR
    os.makedirs(root)
    DATA_DIR = os.path.join(root, "data")
    os.makedirs(DATA_DIR)
    store_dir = os.path.join(root, "store")
    run = Run()
    EVENTS.clear()
    _PEAK[0] = 0
    _RECORDING[0] = True
    try:
        for number, session in enumerate(plan):
            _SESSION[0] = number
            with nbbuild.Build(store_dir, quota=quota, min_free=0, workers=1, eviction=policy) as b:
                for _, state in session:
                    THRESHOLD, WINDOW = state.threshold, state.window
                    write_data(state)
                    rules = define(b, state.fit_variant, state.features_variant)
                    targets = [rules[name].task(*args) for name, *args in state.targets()]
                    b.build(*targets)
                    for t in b.report.tasks:
                        if t.outcome == "executed":
                            run.executed_seconds += t.seconds
                            run.executed += 1
                    run.wall += b.report.seconds
                    run.peak_volume = max(run.peak_volume, b.store.volume())
                if keep_store and number == len(plan) - 1:
                    rows = b.store.value_rows()
                    run.sizes = {d: size for d, size, *_ in rows}
                    run.db_bytes = b.store.volume() - sum(run.sizes.values())
                    for lst in b.store.traces_index().values():
                        for tr in lst:      # newest first
                            # the cost of a value, as nbbuild's gdsf sees it
                            run.costs[tr.result] = max(run.costs.get(tr.result, 0.0), tr.seconds)
                            # the values a re-run of its task reads
                            run.inputs.setdefault(tr.result, tuple(
                                h for group in tr.deps for key, h in group if not key.startswith(FILE_PREFIX)))
    finally:
        _RECORDING[0] = False
    run.events = list(EVENTS)
    run.peak_volume = max(run.peak_volume, _PEAK[0])
    run.loads = sum(1 for kind, *_ in run.events if kind == "load")
    run.misses = sum(1 for kind, *_ in run.events if kind == "miss")
    shutil.rmtree(root, ignore_errors=True)
    return run


# ---------------------------------------------------------------- the offline optimum

@dataclass
class Optimum:
    extra: float            # recompute seconds of the best schedule (a lower bound if not proven optimal)
    status: str             # "optimal", or "bound": the MILP's time ran out, `extra` is its dual bound
    variables: int
    seconds: float          # time the solver took


def offline_optimum(events: list[tuple[str, str, int]], sizes: dict[str, int], costs: dict[str, float],
                    capacity: int, inputs: dict[str, tuple[str, ...]] | None = None,
                    time_limit: float = 300.0) -> Optimum:
    """The least recompute time for the store requests `events` (the unlimited run's, in order)
    with `capacity` bytes of store, knowing the future: offline caching with sizes and costs,
    solved exactly as a MILP.

    A value's requests are points in time: a put (its task ran anyway and wrote it: free) or a
    load (it must be there, or its task runs again at its cost and writes it). Binaries: k = "the
    value is kept in the store since its previous point" (the interval formulation: one per gap
    between consecutive points), r = "its task runs again here". A value can only be kept from a
    point where it was there (k <= k_prev + r_prev, or a put). At every request the values kept
    across it, and the ones there at it, fit in `capacity`; a value larger than `capacity` is
    never stored. Dropping a value costs nothing and can happen at any time, with full knowledge
    of the future; so no policy can do better on this sequence of requests.

    Without `inputs` that is the whole model, and a lower bound on what a real run costs: a task
    that runs again reads its inputs, which may have been evicted too (a cascade the recorded
    loads do not show). With `inputs` (value -> the values its task reads, from its trace), each
    value also gets a point at every time a value that reads it (transitively) may run again, and
    must then be there (kept, run again, or already in memory: loaded or made earlier in the same
    session) whenever that dependent does run again (r_dependent <= k + r + in-memory). That
    charges cascades too, so the bound is tighter; still a lower bound."""
    start = time.perf_counter()
    inputs = inputs or {}
    own: dict[str, list[int]] = defaultdict(list)
    for t, (_, d, _) in enumerate(events):
        own[d].append(t)
    readers: dict[str, set[str]] = defaultdict(set)
    for e, ins in inputs.items():
        if e in own:
            for d in ins:
                if d in own:
                    readers[d].add(e)
    may_run: dict[str, set[int]] = {}       # times a value's task may have to run again

    def rerun_times(d: str) -> set[int]:
        if d not in may_run:
            may_run[d] = {t for t in own[d] if events[t][0] != "put"}
            for e in readers[d]:
                may_run[d] |= rerun_times(e)
        return may_run[d]

    # points of each value: (time, "put" | "load" | "cascade"), from its first put on
    points: dict[str, list[tuple[int, str]]] = {}
    for d, ts in own.items():
        first = ts[0]
        cascade = set().union(*(rerun_times(e) for e in readers[d])) - set(ts) if readers[d] else set()
        pts = [(t, "put" if events[t][0] == "put" else "load") for t in ts]
        pts += [(t, "cascade") for t in cascade if t > first]
        points[d] = sorted(pts)

    # variables: k and r per point, a ("kept, and loaded here because a reader ran") per cascade point
    cost: list[float] = []
    upper: list[float] = []
    k_var: dict[tuple[str, int], int] = {}
    r_var: dict[tuple[str, int], int] = {}
    a_var: dict[tuple[str, int], int] = {}

    def new(c: float, ub: float) -> int:
        cost.append(c)
        upper.append(ub)
        return len(cost) - 1

    for d, pts in points.items():
        storable = sizes[d] <= capacity
        for i, (t, kind) in enumerate(pts):
            k_var[d, t] = new(0.0, 1.0 if storable and i > 0 and kind != "put" else 0.0)
            if kind != "put":
                r_var[d, t] = new(costs.get(d, 0.0), 1.0)
            if kind == "cascade":
                a_var[d, t] = new(0.0, 1.0)

    rows: list[dict[int, float]] = []
    lower: list[float] = []
    top: list[float] = []

    def row(coefs: dict[int, float], lo: float, hi: float) -> None:
        rows.append(coefs)
        lower.append(lo)
        top.append(hi)

    for d, pts in points.items():
        session_of = {t: events[t][2] for t, _ in pts}
        seen_own: set[int] = set()          # sessions in which the value was loaded or made
        memory: list[int] = []              # cascade points earlier in the same session
        for i, (t, kind) in enumerate(pts):
            session = session_of[t]
            if i and session_of[pts[i - 1][0]] != session:
                memory = []
            k, r = k_var[d, t], r_var.get((d, t))
            if r is not None:
                row({k: 1, r: 1}, 0, 1)
                if i + 1 < len(pts):        # kept onwards only from where it was there
                    row({k_var[d, pts[i + 1][0]]: 1, k: -1, r: -1}, -np.inf, 0)
            if kind == "load":
                # there: kept, run again, or in memory since an earlier cascade point
                row({k: 1, r: 1, **{v: 1 for j in memory for v in (a_var[d, j], r_var[d, j])}}, 1, np.inf)
            elif kind == "cascade":
                a = a_var[d, t]
                row({a: 1, k: -1}, -np.inf, 0)
                runs = [r_var[e, t] for e in readers[d] if (e, t) in r_var]
                row({a: 1, **{v: -1 for v in runs}}, -np.inf, 0)
                if session not in seen_own:  # (else it is in memory: loaded or made this session)
                    here = {k: 1, r: 1, **{v: 1 for j in memory for v in (a_var[d, j], r_var[d, j])}}
                    for v in runs:
                        row({**here, v: -1}, 0, np.inf)
                memory.append(t)
            if kind != "cascade":
                seen_own.add(session)

    # capacity at every request: what is kept across it and what is there at it
    occupancy: list[dict[int, float]] = [{} for _ in events]
    room = np.full(len(events), float(capacity))
    for t, (kind, d, _) in enumerate(events):
        if kind == "put" and sizes[d] <= capacity:
            room[t] -= sizes[d]
    for d, pts in points.items():
        if sizes[d] > capacity:
            continue
        for i, (t, kind) in enumerate(pts):
            if kind != "put":
                occupancy[t][k_var[d, t]] = sizes[d]
                occupancy[t][r_var[d, t]] = sizes[d]
            if i + 1 < len(pts):
                for u in range(t + 1, pts[i + 1][0]):
                    occupancy[u][k_var[d, pts[i + 1][0]]] = sizes[d]
    for t, coefs in enumerate(occupancy):
        if coefs:
            row(coefs, -np.inf, room[t])

    n = len(cost)
    data, ri, ci = [], [], []
    for i, coefs in enumerate(rows):
        for j, v in coefs.items():
            ri.append(i)
            ci.append(j)
            data.append(v)
    a_matrix = sp.csr_matrix((data, (ri, ci)), shape=(len(rows), n))
    res = milp(np.array(cost), integrality=np.ones(n), bounds=Bounds(np.zeros(n), np.array(upper)),
               constraints=LinearConstraint(a_matrix, np.array(lower), np.array(top)),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    if res.status == 0:
        extra, status = float(res.fun), "optimal"
    elif getattr(res, "mip_dual_bound", None) is not None:
        extra, status = float(res.mip_dual_bound), "bound"     # not solved in time: still a lower bound
    else:
        raise RuntimeError(f"the offline optimum could not be computed: {res.message}")
    return Optimum(extra, status, n, time.perf_counter() - start)


# ---------------------------------------------------------------- report

def machine() -> str:
    return (f"{platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, scipy {scipy.__version__}, nbbuild {nbbuild.__version__} "
            f"({revision()})")


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [header, ["--:"] * len(header), *rows]
        return "\n".join("| " + " | ".join(r) + " |" for r in lines)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in [header, *rows])


def main() -> None:
    global SCALE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=12)
    p.add_argument("--builds", type=int, default=4, help="builds per session")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quotas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5],
                   help="quotas as shares of the working set")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every task's duration")
    p.add_argument("--quick", action="store_true", help="6 sessions of 3 builds, quotas 0.1 0.3 0.5")
    p.add_argument("--dir", default=WORK)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.sessions, args.builds, args.quotas = 6, 3, [0.1, 0.3, 0.5]
    SCALE = args.scale
    measured = machine()     # before the run: the tree may change while it runs
    _install_recorder()
    plan = script(args.seed, args.sessions, args.builds)
    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="policies-", dir=args.dir)
    try:
        print("... baseline (no quota)", file=sys.stderr, flush=True)
        base = replay(plan, os.path.join(root, "base"), "unlimited", "gdsf", keep_store=True)
        print("... baseline again (run-to-run noise)", file=sys.stderr, flush=True)
        again = replay(plan, os.path.join(root, "again"), "unlimited", "gdsf")
        working_set = sum(base.sizes.values())
        results: dict[tuple[str, float], Run] = {}
        optima: dict[tuple[str, float], Optimum] = {}
        for i, share in enumerate(args.quotas):
            quota = int(share * working_set)
            # alternate which policy goes first, so drift in the machine's speed favours neither
            for policy in (("lru", "gdsf") if i % 2 == 0 else ("gdsf", "lru")):
                print(f"... {policy} at {share:.0%} of the working set", file=sys.stderr, flush=True)
                results[policy, share] = replay(plan, os.path.join(root, f"{policy}-{share}"), quota, policy)
            print(f"... offline optima at {share:.0%}", file=sys.stderr, flush=True)
            optima["loads", share] = offline_optimum(base.events, base.sizes, base.costs, quota)
            optima["cascade", share] = offline_optimum(base.events, base.sizes, base.costs, quota, base.inputs)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    builds = args.sessions * args.builds
    edits = Counter(action for session in plan for action, _ in session[1:])
    print(f"Machine: {measured}")
    print(f"Workload: seed {args.seed}, {args.sessions} sessions x {args.builds} builds; edits between builds: "
          + ", ".join(f"{name} {n}" for name, n in edits.most_common()) + ".")
    print(f"Working set {working_set / MB:.1f} MB in {len(base.sizes)} values (+{base.db_bytes / MB:.2f} MB of "
          f"index). Unlimited run: {base.executed} tasks ran for {base.executed_seconds:.2f} s, {base.loads} loads; "
          f"the same again: {again.executed_seconds - base.executed_seconds:+.2f} s (run-to-run noise).\n")
    head = ["quota", "MB", "opt loads", "optimum", "lru", "gdsf", "gdsf/lru", "lru/opt", "gdsf/opt",
            "lru peak", "gdsf peak", "lru wall", "gdsf wall"]
    rows = []
    for share in args.quotas:
        quota = int(share * working_set)
        lru, gdsf = results["lru", share], results["gdsf", share]
        loads, opt = optima["loads", share], optima["cascade", share]
        e_lru, e_gdsf = lru.executed_seconds - base.executed_seconds, gdsf.executed_seconds - base.executed_seconds

        def ratio(x: float, y: float) -> str:
            return f"{x / y:.2f}" if y >= NOISE else "-"     # a ratio to noise says nothing

        def bound(o: Optimum) -> str:
            return f"{o.extra:.2f}" + ("*" if o.status == "bound" else "")
        rows.append([f"{share:.0%}", f"{quota / MB:.1f}", bound(loads), bound(opt),
                     f"{e_lru:.2f} ({lru.executed - base.executed})", f"{e_gdsf:.2f} ({gdsf.executed - base.executed})",
                     ratio(e_gdsf, e_lru), ratio(e_lru, opt.extra), ratio(e_gdsf, opt.extra),
                     f"{lru.peak_volume / quota:.2f}", f"{gdsf.peak_volume / quota:.2f}",
                     f"{lru.wall - base.wall:+.1f}", f"{gdsf.wall - base.wall:+.1f}"])
    print(table(head, rows, args.markdown))
    solve = max(o.seconds for o in optima.values())
    print(f"\n{builds} builds per run. lru, gdsf: seconds of extra recompute over the unlimited run (extra tasks run). "
          "'opt loads': the offline optimum on the unlimited run's loads alone; 'optimum': the same with "
          "the re-runs of inputs a miss causes (cascades) charged; ratios are to the latter, and not shown "
          f"when that is under {NOISE} s. "
          "'peak': the store's largest size (after each value written and each build) / quota. 'wall': extra wall time of the builds "
          f"(loads, eviction, re-runs). * = MILP stopped at its time limit: its dual bound. Slowest MILP: {solve:.1f} s.")


if __name__ == "__main__":
    main()
