"""The shared tier (issue 19) against plain s3fs, on a real S3 API server on loopback (moto).

Three figures, each measured in one run, as ratios:

  hit     a 200 MB float64 array one machine built, restored by another whose local store is
          empty: `b.build(big)` (one listing and one batch of pack reads, the download into the
          local store, the team signature and hash checked, the value loaded) against a plain
          `fs.cat` of the same object's bytes into memory. Alternating order, median of
          --repeat. Ratio = cat's time / ours (goal >= 0.8).
  noop    a 1,000-task graph (999 leaves, one target that fetches them all) another machine
          built, "built" again by a machine with an empty local store: nothing runs; the
          traces come in one batch and only the target's value is downloaded. Seconds (goal <= 2).
  upload  a build of 40 tasks (each ~50 ms of numpy work, a 4 MB result) with the shared tier
          against the same build without it: uploads go on in the background. Ratio = with /
          without, build time only (goal <= 1.05); the wait for the last uploads is reported
          apart. On this machine the S3 server shares the cores with the build, which a real
          bucket does not; a shared folder (--tier dir) has no server.

Run: python benchmarks/bench_shared.py [--markdown] [--mb 200] [--repeat 5] [--tier s3|dir]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import nbbuild  # noqa: E402
from nbbuild.store.signing import new_key_file  # noqa: E402


def _tier(kind: str, work: str) -> tuple[str, object, object]:
    """(url, the server or None, an fsspec filesystem on the tier)."""
    if kind == "dir":
        import fsspec
        return os.path.join(work, "team"), None, fsspec.filesystem("file")
    from tests.s3server import S3Server
    server = S3Server()
    os.environ.update({"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}, key="testing", secret="testing")
    return f"s3://{server.bucket()}/nbbuild", server, fs


def _build(local: str, url: str | None, rules, target, **kw):
    b = nbbuild.Build(local, shared=url if url else "", progress=False, **kw)
    defined = rules(b)
    start = time.perf_counter()
    value = b.build(defined[target])[0]
    _build.executed = list(b.report.executed)     # type: ignore[attr-defined]
    took = time.perf_counter() - start
    start = time.perf_counter()
    b.close()
    return value, took, time.perf_counter() - start


def bench_hit(url: str, fs, work: str, mb: int, repeat: int) -> dict:
    n = mb * 10**6 // 8

    def rules(b):
        @b.rule
        def big():
            return np.arange(n, dtype="float64")
        return {"big": big}

    _build(os.path.join(work, "maker"), url, rules, "big")
    digest = next(iter(_objects(url)))
    path = f"{url}/v/{digest[:2]}/{digest}".replace("s3://", "")
    ours, cats = [], []
    for i in range(repeat):
        local = os.path.join(work, f"hit{i}")
        order = ("ours", "cat") if i % 2 == 0 else ("cat", "ours")
        for what in order:
            if what == "ours":
                value, took, _ = _build(local, url, rules, "big")
                assert value.shape == (n,)
                ours.append(took)
                shutil.rmtree(local)
            else:
                start = time.perf_counter()
                blob = fs.cat(path)
                cats.append(time.perf_counter() - start)
                assert len(blob) > mb * 10**6
                del blob
    return {"ours": statistics.median(ours), "cat": statistics.median(cats),
            "ratio": statistics.median(cats) / statistics.median(ours)}


def _objects(url: str) -> dict:
    from nbbuild.settings import read as read_settings
    from nbbuild.store.shared import open_tier
    return open_tier(url, True, read_settings()).values()


def bench_noop(url: str, work: str, tasks: int) -> dict:
    def rules(b):
        @b.rule
        def leaf(i):
            return i * i

        @b.rule
        def top():
            return sum(leaf.map(range(tasks - 1)))
        return {"top": top}

    _, cold, _ = _build(os.path.join(work, "noop-maker"), url, rules, "top")
    value, took, _ = _build(os.path.join(work, "noop-fresh"), url, rules, "top")
    assert _build.executed == [], f"{len(_build.executed)} tasks ran"      # type: ignore[attr-defined]
    assert value == sum(i * i for i in range(tasks - 1))
    return {"tasks": tasks, "seconds": took, "cold": cold}


def bench_upload(url: str, work: str, repeat: int) -> dict:
    def rules(b):
        @b.rule
        def part(i, salt):
            rng = np.random.default_rng(i)
            a = rng.standard_normal(500_000)
            for _ in range(6):
                a = np.sort(a)[::-1] + salt
            return a

        @b.rule
        def whole(salt):
            return float(sum(part(i, salt).sum() for i in range(40)))
        return {"whole": whole}

    with_tier, without, waits = [], [], []
    for i in range(repeat):
        for what in (("with", "without") if i % 2 == 0 else ("without", "with")):
            local = os.path.join(work, f"up-{what}-{i}")
            b = nbbuild.Build(local, shared=url if what == "with" else "", progress=False, workers=1)
            whole = rules(b)["whole"]
            start = time.perf_counter()
            b.build(whole.task(float(i)))
            took = time.perf_counter() - start
            start = time.perf_counter()
            b.close()
            (with_tier if what == "with" else without).append(took)
            if what == "with":
                waits.append(time.perf_counter() - start)
            shutil.rmtree(local)
    return {"with": statistics.median(with_tier), "without": statistics.median(without),
            "ratio": statistics.median(with_tier) / statistics.median(without), "wait": statistics.median(waits)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--tier", choices=("s3", "dir"), default="s3")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-shared-")
    os.environ["XDG_CONFIG_HOME"] = os.path.join(work, "config")
    new_key_file(os.path.join(work, "team.key"))
    os.environ["NBBUILD_TEAM_KEY"] = os.path.join(work, "team.key")
    url, server, fs = _tier(args.tier, work)
    try:
        hit = bench_hit(url, fs, work, args.mb, args.repeat)
        noop = bench_noop(url, work, args.tasks)
        up = bench_upload(url, work, args.repeat)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("hit", f"{args.mb} MB array from the shared tier, empty local store", f"{hit['ours']:.2f} s",
         f"fs.cat {hit['cat']:.2f} s", f"{hit['ratio']:.2f}x cat's speed", ">= 0.8x"),
        ("noop", f"{noop['tasks']}-task graph, empty local store, nothing runs", f"{noop['seconds']:.2f} s",
         f"(cold build {noop['cold']:.2f} s)", f"{noop['seconds']:.2f} s", "<= 2 s"),
        ("upload", "40 tasks x 4 MB, build time with the tier / without", f"{up['with']:.2f} s",
         f"without {up['without']:.2f} s", f"{up['ratio']:.3f}x (then {up['wait']:.2f} s waiting at close)", "<= 1.05x"),
    ]
    if args.markdown:
        print(f"| figure ({args.tier} tier) | what | nbbuild | peer | result | goal |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in rows:
            print("  ".join(r))


if __name__ == "__main__":
    main()
