"""Scale-out on this machine: 40 ACAS Xu instances serially (default threads, and one thread), with
``--workers 2`` and with ``--ray auto``
(a local Ray cluster started and stopped by the command, its start-up included), as whole ``certify bench``
commands timed wall-clock in this process; answers compared row by row; then each executor's per-task
overhead from no-op tasks (``certify.scale.probe``).

Usage: ``.venv/bin/python benchmarks/scale_bench.py [--timeout S] [--skip-ray]``
(needs ``../shared/benchmarks/acasxu``; the instances: ``benchmarks/acas40.csv``).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACAS = ROOT.parent / "shared" / "benchmarks" / "acasxu"


SELECTION = Path(__file__).with_name("acas40.csv")


def selection(folder: Path) -> Path:
    """The instances named in ``acas40.csv`` (its header says how they were chosen), with absolute paths, the
    competition's timeouts and the expected answers, in the suite's order."""
    with open(ACAS / "expected_results.csv") as f:
        rows = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(f)}
    with open(SELECTION) as f:
        names = [tuple(line.strip().split(",")) for line in f if line.strip() and not line.startswith("#")][1:]
    out = folder / "instances.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["onnx", "vnnlib", "timeout_s", "expected"])
        for key in names:
            r = rows[key]
            w.writerow([ACAS / r["onnx"], ACAS / r["vnnlib"], r["timeout_s"], r["expected"]])
    return out


def run(label: str, args: list[str], out: Path) -> tuple[float, list[tuple[str, str, str]]]:
    cmd = [sys.executable, "-m", "certify.cli", "bench", *args, "--csv", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    dt = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"{label}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    with open(out) as f:
        answers = [(Path(r["onnx"]).stem, Path(r["vnnlib"]).stem, r["answer"]) for r in csv.DictReader(f)]
    print(f"{label:>12}: {dt:7.1f} s wall-clock", flush=True)
    return dt, answers


def overhead(make, n: int = 2000) -> tuple[float, float]:
    """(start-up s, ms per no-op task) of an executor: t(1 task) and (t(n + 1) - t(1)) / n, fresh executors."""
    from certify.scale import Task, execute
    from certify.scale.probe import probe

    def timed(k: int) -> float:
        t0 = time.perf_counter()
        ex = make()
        try:
            execute(probe, None, [Task(i, str(i), {"value": i}) for i in range(k)], ex, lambda t, f: None)
            return time.perf_counter() - t0
        finally:
            ex.close()

    one = timed(1)
    return one, 1000 * (timed(n + 1) - one) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, help="seconds per instance (default: the competition's, 116)")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    if not ACAS.exists():
        sys.exit(f"{ACAS} is absent")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suite = selection(tmp)
        common = [str(suite)] + (["--timeout", f"{args.timeout:g}"] if args.timeout else [])
        print(f"{sum(1 for _ in open(suite)) - 1} ACAS Xu instances, timeout {args.timeout or 'competition'} s, "
              f"{os.cpu_count()} cores", flush=True)
        t_serial, a_serial = run("serial", common, tmp / "s.csv")
        t_one, a_one = run("serial, 1 thread", common + ["--threads", "1"], tmp / "s1.csv")
        results = {"--workers 2": run("--workers 2", common + ["--workers", "2"], tmp / "w.csv")}
        if not args.skip_ray:
            results["--ray auto"] = run("--ray auto", common + ["--ray", "auto"], tmp / "r.csv")
    solved = sum(a in ("sat", "unsat") for *_, a in a_serial)
    print(f"\nserial: {solved} of {len(a_serial)} solved, {t_serial:.1f} s\n")
    print("| run | wall-clock s | speed-up vs serial (default threads) | vs serial, 1 thread | answers identical "
          "to serial |")
    print("|---|---|---|---|---|")
    print(f"| serial (default: torch threads on the free cores) | {t_serial:.1f} | 1.00 | {t_one / t_serial:.2f} | - |")
    for label, (dt, answers) in [("serial, 1 thread", (t_one, a_one)), *results.items()]:
        same = answers == a_serial
        diff = "" if same else f" ({sum(x != y for x, y in zip(answers, a_serial))} differ)"
        print(f"| {label} | {dt:.1f} | {t_serial / dt:.2f} | {t_one / dt:.2f} | {'yes' if same else 'NO'}{diff} |")

    from certify.scale.executors import ProcessPool, Serial

    makers = {"serial (in process)": Serial, "--workers 2": lambda: ProcessPool(2)}
    if not args.skip_ray:
        from certify.scale.ray_pool import RayPool

        makers["--ray auto (local)"] = lambda: RayPool("auto")
    print("\n| executor | start-up s (1 task) | ms per no-op task, wall-clock (2,000 tasks) |")
    print("|---|---|---|")
    for label, make in makers.items():
        start, per = overhead(make)
        print(f"| {label} | {start:.2f} | {per:.2f} |", flush=True)


if __name__ == "__main__":
    main()
