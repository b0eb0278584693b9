"""Workdir safety (#14): one run per workdir, config drift refused, no orphaned workers, user
errors as one line with status 2 and nothing left behind."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from helpers import REPO, race_for_a_dead_runs_lock
from wlsft_jax import recipes, workdir as workdir_lib


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    holder = workdir_lib.acquire_lock(epath.Path(tmp_path))
    with pytest.raises(workdir_lib.WorkdirBusyError,
                       match=rf"in use by process {os.getpid()} on host {socket.gethostname()} "
                             rf"\(started {re.escape(holder['started'])}\).*rm {tmp_path}/LOCK"):
        workdir_lib.acquire_lock(epath.Path(tmp_path))
    workdir_lib.release_lock(epath.Path(tmp_path), holder)
    assert not (tmp_path / "LOCK").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_one_from_another_host_is_not(tmp_path):
    lock = tmp_path / "LOCK"
    lock.write_text(json.dumps(dict(host=socket.gethostname(), pid=_dead_pid(), started="x")))
    holder = workdir_lib.acquire_lock(epath.Path(tmp_path))
    assert json.loads(lock.read_text()) == holder and holder["pid"] == os.getpid()
    lock.write_text(json.dumps(dict(host="elsewhere", pid=_dead_pid(), started="y")))
    with pytest.raises(workdir_lib.WorkdirBusyError, match="on host elsewhere"):
        workdir_lib.acquire_lock(epath.Path(tmp_path))


def test_of_concurrent_takeovers_of_a_dead_runs_lock_exactly_one_wins(tmp_path, monkeypatch):
    """Eight starts let go at once on a dead run's lock: one holds the workdir, the seven others
    find it in use (a removal, then a create, let several through)."""
    won, busy = race_for_a_dead_runs_lock(epath.Path(tmp_path), monkeypatch)
    assert len(won) == 1 and len(busy) == 7, (won, busy)
    assert json.loads((tmp_path / "LOCK").read_text()) == won[0]
    assert sorted(os.listdir(tmp_path)) == ["LOCK"]


def test_config_drift_is_refused_naming_the_keys_and_the_recorded_config_is_kept(tmp_path):
    workdir = epath.Path(tmp_path)
    config = recipes.base(stages=("ft",), ft=recipes.stage("ft", steps=10))
    with workdir_lib.claim(workdir, config):
        pass
    recorded = (tmp_path / "config.json").read_text()
    config.ft.log_every, config.ft.checkpoint_every, config.eval.batch_size = 1, 5, 64
    with workdir_lib.claim(workdir, config):  # Keys that cannot change results may differ.
        pass
    config.ft.optim.lr, config.seed = 3e-5, 7
    with pytest.raises(workdir_lib.ConfigDriftError,
                       match=r"ft\.optim\.lr: 0\.001 -> 3e-05; seed: 0 -> 7\. Rerun"):
        with workdir_lib.claim(workdir, config):
            pass
    assert (tmp_path / "config.json").read_text() == recorded
    assert not (tmp_path / "LOCK").exists()
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").open()]
    assert [entry["config"]["ft"]["log_every"] for entry in history] == [25, 1]


def _run_main(args):
    return subprocess.run([sys.executable, "-m", "wlsft_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO, WLSFT_TRACEBACK=""))


@pytest.mark.parametrize("args, message", [
    (["--config=configs/flyp_clip.py", "--config.ft.optim.lrr=1"],
     r"unknown config section 'ft' in config; valid: \[.*'flyp'"),
    (["--config=configs/flyp_clip.py", "--config.flyp.optim.lrr=1"],
     r"unknown config key 'lrr' in config\.flyp\.optim; valid: \['b1'.*'lr'"),
    (["--config=configs/flyp_clip.py", "--config.stages=('flpy',)"],
     r"Stage\(s\) \['flpy'\] .* Did you mean 'flyp' for 'flpy'\?"),
    (["--config=configs/flyp_clip.py", "--config.init.format=orbax", "--config.init.name=",
      "--config.init.path=/no/such/run/pretrain"],
     r"init\.path='/no/such/run/pretrain' does not exist"),
    (["--config=configs/flyp_clpi.py"], r"no such config file; e\.g\. configs/ has \[.*"
                                        r"'flyp_clip\.py'"),
    (["--config=configs/ft_clip.py:evals=knn+linearprobe"],
     r"Unknown evaluator type in config argument evals 'linearprobe'; valid choices: \['knn', "
     r"'linear_probe', 'zero_shot'\]"),
])
def test_a_user_error_is_one_line_with_status_2_and_leaves_no_workdir(tmp_path, args, message):
    result = _run_main([*args, f"--workdir={tmp_path / 'w'}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("wlsft_jax.main: error:")]
    assert re.search(message, line), line
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_two_runs_started_on_one_workdir_the_second_is_refused_and_the_first_finishes(tmp_path):
    args = ["-m", "wlsft_jax.main", "--config=configs/ft_clip.py", "--config.ft.steps=20",
            "--config.ft.optim.warmup_steps=2", "--config.eval.alphas=(1.0,)",
            "--config.data.eval_examples_per_domain=20", f"--workdir={tmp_path / 'w'}"]
    env = dict(os.environ, PYTHONPATH=REPO)
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "w" / "LOCK").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.1)
        second = _run_main(args[2:])
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by process {first.pid} on host {socket.gethostname()}" in second.stderr
        assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    finally:
        first.kill()
    assert not (tmp_path / "w" / "LOCK").exists()
    assert (tmp_path / "w" / "report" / "report.md").exists()


def _children(pid):
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # Ended meanwhile.
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry))
    return children


_LOADER_SCRIPT = """
from absl import flags; flags.FLAGS.mark_as_parsed()
from wlsft_jax.data import pipeline, world
source = world.WorldSource(split="train", domains=("photo",), examples_per_domain=64,
                           image_size=16)
batches = iter(pipeline.train_loader(source, global_batch_size=4, operations=[], seed=0,
                                     worker_count=2))
next(batches)
print("ready", flush=True)
import time; time.sleep(600)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_grain_workers_exit_when_their_run_is_killed_by_sigkill():
    process = subprocess.Popen([sys.executable, "-c", _LOADER_SCRIPT], cwd=REPO,
                               stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert process.stdout.readline().strip() == "ready"
        workers = _children(process.pid)
        assert len(workers) >= 2, workers  # The two grain workers (maybe a resource tracker).
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.time() + 20
    while _alive(workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(workers), f"orphaned workers: {_alive(workers)}"


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


@pytest.mark.slow
def test_a_main_job_prints_a_short_log_without_library_info_lines_and_the_table_last(tmp_path):
    result = _run_main(["--config=configs/ft_clip.py", "--config.ft.steps=10",
                        "--config.ft.optim.warmup_steps=2", "--config.eval.alphas=(0.0,1.0)",
                        "--config.data.eval_examples_per_domain=20",
                        f"--workdir={tmp_path / 'w'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stderr + result.stdout).splitlines()
    assert len(lines) < 80, "\n".join(lines)
    assert not [line for line in lines if "orbax" in line or "checkpoint_manager" in line]
    assert not [line for line in lines if "port.cc" in line or "oneDNN" in line]
    assert result.stdout.strip().splitlines()[-1].startswith("| zeroshot |")
    assert "img/embedding/kernel" in (tmp_path / "w" / "ft" / "parameters.txt").read_text()
    # README's Outputs section names exactly what the run wrote (LOCK only while it runs).
    readme = open(os.path.join(REPO, "README.md")).read()
    outputs = readme[readme.index("## Outputs"):readme.index("### TensorBoard tags")]
    named = set()
    for bullet in outputs.split("\n- ")[1:]:
        tokens = [token.replace("<stage>", "ft").replace("<metric>", "top1").rstrip("/")
                  for token in re.findall(r"`([\w<>./-]+)`", bullet) if "seed" not in token]
        named |= {tokens[0]} | {f"{tokens[0]}/{token}" if tokens[0] == "report" else token
                                for token in tokens[1:]}
    workdir = tmp_path / "w"
    written = {path.name for path in workdir.iterdir()} | {"LOCK"}
    written |= {f"ft/{path.name}" for path in (workdir / "ft").iterdir() if path.is_file()}
    written |= {f"report/{path.name}" for path in (workdir / "report").iterdir()}
    assert written == named
