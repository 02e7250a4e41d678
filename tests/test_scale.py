"""Scale-out: local workers and a real two-node Ray cluster give the serial run's rows in its order; a worker
killed mid-task is retried and no row is lost; an interrupted run resumes from its journal."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from certify.scale import Failure, Journal, Task, execute
from certify.scale.executors import ProcessPool, Serial
from certify.scale.probe import probe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "certify" / "examples" / "digits"
CLI = [sys.executable, "-m", "certify.cli"]


def _failed(task, failure: Failure):
    return {"failed": failure.kind, "reason": failure.reason}


def _tasks(n: int, deadline: float | None = None, **payload) -> list[Task]:
    return [Task(i, f"t{i}", {"value": i, **payload}, deadline) for i in range(n)]


@contextlib.contextmanager
def _killing(folder: Path, value: int | None = None, times: int = 1):
    """While the block runs, kill (SIGKILL) the worker that marks ``folder`` (with task ``value`` only, when
    given), ``times`` times; yields the killed pids. The probe sleeps after marking: the kill lands mid-task."""
    killed: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set() and len(killed) < times:
            for f in sorted(folder.iterdir()):
                pid, v = f.name.split(".")
                if value is None or int(v) == value:
                    f.unlink()
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    break
            time.sleep(0.02)

    threading.Thread(target=run, daemon=True).start()
    try:
        yield killed
    finally:
        stop.set()


# ----------------------------------------------------------------------------------------------- executors
def test_local_workers_return_every_row_in_task_order_from_several_processes():
    rows = execute(probe, None, _tasks(8, sleep=0.2), ProcessPool(2), _failed)
    assert [r[1] for r in rows] == list(range(8))
    assert len({r[0] for r in rows}) == 2 and os.getpid() not in {r[0] for r in rows}


def test_a_worker_killed_mid_task_is_retried_and_no_row_is_lost(tmp_path):
    events = []
    with _killing(tmp_path, value=1) as killed:
        rows = execute(probe, None, _tasks(4, sleep=1.0, mark=str(tmp_path)), ProcessPool(2, retries=2), _failed,
                       on_event=events.append)
    assert len(killed) == 1
    assert [r[1] for r in rows] == [0, 1, 2, 3]  # the killed task's row came from its retry
    assert rows[1][0] != killed[0]  # ... on a fresh worker
    assert any("died (killed by SIGKILL); retrying (1 of 2)" in e for e in events), events


def test_retries_are_bounded_then_the_row_records_why(tmp_path):
    events = []
    with _killing(tmp_path, value=0, times=2) as killed:
        rows = execute(probe, None, _tasks(3, sleep=1.0, mark=str(tmp_path)), ProcessPool(2, retries=1), _failed,
                       on_event=events.append)
    assert len(killed) == 2
    assert rows[0]["failed"] == "died" and "killed by SIGKILL" in rows[0]["reason"]
    assert [r[1] for r in rows[1:]] == [1, 2]
    assert any("giving up after 1 retries" in e for e in events)


def test_a_task_past_its_deadline_is_stopped_and_not_retried():
    t0 = time.monotonic()
    rows = execute(probe, None, [Task(0, "slow", {"value": 0, "sleep": 60}, 1.0),
                                 Task(1, "quick", {"value": 1}, 30.0)], ProcessPool(2), _failed)
    assert rows[0]["failed"] == "deadline" and rows[1][1] == 1
    assert time.monotonic() - t0 < 30


def test_an_exception_in_a_task_is_its_row_not_the_end_of_the_run():
    tasks = [Task(0, "bad", {"value": 0, "raise": "boom"}), Task(1, "good", {"value": 1})]
    rows = execute(probe, None, tasks, ProcessPool(2), _failed)
    assert rows[0]["failed"] == "error" and "RuntimeError: boom" in rows[0]["reason"]
    assert rows[1][1] == 1


# ----------------------------------------------------------------------------------------------- journal
def test_the_journal_keeps_finished_rows_skips_them_and_drops_a_line_cut_short(tmp_path):
    path = tmp_path / "run.jsonl"
    j = Journal(path, {"command": "t", "n": 3})
    j.add("t0", [1, 0])
    j.add("t1", [1, 1])
    j.close()
    with open(path, "a") as f:
        f.write('{"key": "t2", "row": [1,')  # an interruption mid-write
    j = Journal(path, {"command": "t", "n": 3})
    seen = []
    rows = execute(probe, None, _tasks(3), Serial(), _failed, journal=j, on_row=lambda t, r: seen.append(t.key))
    j.close()
    assert rows[0] == [1, 0] and rows[1] == [1, 1] and rows[2][1] == 2  # the first two came from the journal
    assert seen == ["t0", "t1", "t2"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x.get("key") for x in lines] == [None, "t0", "t1", "t2"]


def test_a_journal_from_other_settings_is_refused(tmp_path):
    from certify.errors import UsageError

    Journal(tmp_path / "run.jsonl", {"command": "bench", "method": "auto"}).close()
    with pytest.raises(UsageError, match="other settings .*method"):
        Journal(tmp_path / "run.jsonl", {"command": "bench", "method": "crown"})


# ----------------------------------------------------------------------------------------------- CLI
def _suite(tmp_path: Path, copies: int = 1) -> Path:
    """The bundled digits instances (6 properties of one MLP), ``copies`` times over."""
    rows = [f"{EXAMPLES / 'digits_mlp.onnx'},{p},20" for p in sorted(EXAMPLES.glob("*.vnnlib"))] * copies
    path = tmp_path / "instances.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def _answers(csv_path: Path) -> list[tuple[str, str, str]]:
    with open(csv_path) as f:
        return [(Path(r["vnnlib"]).name, r["answer"], r["method"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_bench_with_workers_gives_the_serial_answers_in_the_serial_order(tmp_path):
    suite = _suite(tmp_path)
    serial = _cli("bench", str(suite), "--csv", str(tmp_path / "s.csv"), "--quiet")
    parallel = _cli("bench", str(suite), "--csv", str(tmp_path / "p.csv"), "--workers", "2")
    assert serial.returncode == parallel.returncode == 0, parallel.stderr
    assert _answers(tmp_path / "s.csv") == _answers(tmp_path / "p.csv")
    assert len(_answers(tmp_path / "s.csv")) == 6


@pytest.mark.slow
def test_verify_data_with_workers_gives_the_serial_table(tmp_path):
    args = ["verify", str(EXAMPLES / "digits_mlp.onnx"), "--data", str(EXAMPLES / "test.npz"), "--limit", "8",
            "--eps", "0.02,0.1", "--method", "crown,auto", "--timeout", "10", "--json"]
    serial, parallel = _cli(*args), _cli(*args, "--workers", "2")
    assert serial.returncode == parallel.returncode, parallel.stderr

    def answers(out: str) -> list:
        rows = [json.loads(line) for line in out.splitlines()]
        per = sorted((r["eps"], r["requested"], r["property"], r["verdict"]) for r in rows[:-1])
        sweep = [{k: v for k, v in s.items() if k != "methods"} for s in rows[-1]["summary"]["sweep"]]
        return [per, sweep, [{m: v["certified"] for m, v in s["methods"].items()}
                             for s in rows[-1]["summary"]["sweep"]]]

    assert answers(serial.stdout) == answers(parallel.stdout)


@pytest.mark.slow
def test_an_interrupted_bench_resumes_from_its_journal_without_rerunning_finished_rows(tmp_path):
    copies = 20  # enough rows left when the interrupt lands: with 5 copies a fast run could finish first
    total = 6 * copies
    suite, journal = _suite(tmp_path, copies=copies), tmp_path / "run.jsonl"
    args = ["bench", str(suite), "--csv", str(tmp_path / "r.csv"), "--resume", str(journal), "--quiet"]
    # the child starts with Ctrl-C at its default whatever this process inherited: a suite started in the
    # background of a non-interactive shell ignores SIGINT, and children inherit the ignore (seen: exit 0)
    proc = subprocess.Popen(CLI + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:  # header + 3 rows
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    kept = len(journal.read_text().splitlines()) - 1
    assert 3 <= kept < total
    again = _cli(*args[:-1])
    assert again.returncode == 0, again.stderr
    assert f"resuming from {journal}: {kept} finished rows kept" in again.stderr
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert len(rows) == total and len({r["key"] for r in rows}) == total  # each instance ran once in all
    serial = _cli("bench", str(suite), "--csv", str(tmp_path / "s.csv"), "--quiet")
    assert serial.returncode == 0, serial.stderr
    assert _answers(tmp_path / "r.csv") == _answers(tmp_path / "s.csv")


def test_scale_options_are_checked_before_any_work(tmp_path):
    suite = _suite(tmp_path)
    r = _cli("bench", str(suite), "--workers", "0")
    assert r.returncode == 2 and "--workers: expected a positive number" in r.stderr
    r = _cli("bench", str(suite), "--workers", "2", "--ray", "auto")
    assert r.returncode == 2 and "give one of them" in r.stderr
    r = _cli("bench", str(suite), "--resume", str(tmp_path / "no" / "such.jsonl"))
    assert r.returncode == 4 and "does not exist" in r.stderr


# ----------------------------------------------------------------------------------------------- Ray
RAY_ENV = {"RAY_AUTH_MODE": "token"}  # Ray >= 2.59 authenticates local clusters: every party the same mode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_running() -> bool:
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"gcs_server" in p.read_bytes().split(b"\0")[0]:
                return True
        except OSError:
            pass
    return False


@pytest.fixture(scope="module")
def cluster():
    """A real Ray cluster: a head and a second node on 127.0.0.1, one CPU each, started with ``ray start``.
    Skipped when Ray is not installed (an optional extra) or a cluster already runs on this machine (``ray
    stop`` at the end would stop it too)."""
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # before Ray is imported here: it reads the mode once
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'certify[ray]')")
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray_bin is None or _ray_running():
        pytest.skip("no ray executable, or a Ray cluster is already running here")
    port = _free_port()
    env = {**os.environ, **RAY_ENV}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       check=True, capture_output=True, env=env, timeout=180)
        subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", *common],
                       check=True, capture_output=True, env=env, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.slow
def test_bench_on_a_two_node_ray_cluster_gives_the_serial_answers(cluster, tmp_path):
    suite = _suite(tmp_path)
    serial = _cli("bench", str(suite), "--csv", str(tmp_path / "s.csv"), "--quiet")
    on_ray = _cli("bench", str(suite), "--csv", str(tmp_path / "r.csv"), "--ray", cluster, env=RAY_ENV)
    assert serial.returncode == on_ray.returncode == 0, on_ray.stderr
    assert _answers(tmp_path / "s.csv") == _answers(tmp_path / "r.csv")


@pytest.mark.slow
def test_a_ray_worker_killed_mid_task_is_retried_and_no_row_is_lost(cluster, tmp_path):
    from certify.scale.ray_pool import RayPool

    pool = RayPool(cluster, retries=2)
    assert pool.workers == 2  # both nodes' CPUs
    try:
        with _killing(tmp_path, value=2) as killed:
            rows = execute(probe, None, _tasks(4, sleep=1.5, mark=str(tmp_path)), pool, _failed)
    finally:
        pool.close()
    assert len(killed) == 1
    assert [r[1] for r in rows] == [0, 1, 2, 3]
    assert rows[2][0] != killed[0]  # the killed task's row came from its retry on another worker


# ----------------------------------------------------------------------------------------------- transport
def test_a_worker_answer_is_read_back_with_its_counterexample_replayed_here_and_never_on_trust():
    import numpy as np

    from certify import api
    from certify.models import load_model
    from certify.replay import result_from_dict
    from certify.results import Verdict
    from certify.vnnlib import read_vnnlib

    model = load_model(EXAMPLES / "digits_mlp.onnx")
    prop = read_vnnlib(EXAMPLES / "digit2_label6_eps0.3.vnnlib")
    r = api.verify(model, prop, "pgd", timeout=20)
    assert r.verdict is Verdict.FALSIFIED
    back = result_from_dict(json.loads(r.to_json()), model, prop)
    assert back.verdict is Verdict.FALSIFIED and back.counterexample.replayed
    assert np.array_equal(back.counterexample.x, r.counterexample.x) and back.margin_upper == r.margin_upper
    forged = json.loads(r.to_json())
    forged["counterexample"]["x"] = prop.specs[0].input.center.reshape(-1).tolist()  # the clean input: safe
    back = result_from_dict(forged, model, prop)
    assert back.verdict is Verdict.UNKNOWN and "does not replay" in back.reason


@pytest.mark.slow
def test_smooth_with_workers_gives_the_serial_rows(tmp_path):
    args = ["smooth", str(EXAMPLES / "digits_mlp.onnx"), "--data", str(EXAMPLES / "test.npz"), "--limit", "6",
            "--sigma", "0.25", "0.5", "--n", "2000", "--json"]
    serial, parallel = _cli(*args), _cli(*args, "--workers", "2")
    assert serial.returncode == parallel.returncode == 0, parallel.stderr

    def rows(out: str) -> list:
        lines = [json.loads(line) for line in out.splitlines()]
        summary = [{k: v for k, v in g.items() if k != "time_s"} for g in lines[-1]["summary"]]
        return sorted(tuple((k, v) for k, v in r.items() if k != "time_s") for r in lines[:-1]), summary

    assert rows(serial.stdout) == rows(parallel.stdout)
