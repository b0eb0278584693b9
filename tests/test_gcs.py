"""gs:// workdirs against a real GCS API (#17): a fake-gcs-server per test (`gcs_bucket` in
conftest), checked through the emulator's JSON API rather than through the code under test."""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from helpers import (REPO, SWEEP_CONFIG, SWEEP_DATASETS as DATASETS, SWEEP_TINY, flat,
                     free_port, load, race_for_a_dead_runs_lock, random_params,
                     run_main_in_process, write_small_clip_files)
from wlsft_jax import (checkpoint, context as context_lib, convert, recipes, sharding, storage,
                       sweep, workdir as workdir_lib)
from wlsft_jax.models import two_towers, vit


def _state(value):
    return {"params": {"w": jnp.full((4, 3), value, jnp.float32)}, "step": jnp.int32(value)}


def test_a_checkpoint_on_a_bucket_restores_and_a_step_without_its_commit_file_is_not_one(
        gcs_bucket):
    directory = f"{gcs_bucket.url}/run/ft"
    with checkpoint.Checkpointer(directory) as manager:
        for step in (1, 2):
            manager.save(step, _state(step), metadata={"stage": "ft"}, force=True)
    objects = gcs_bucket.objects("run/ft/")
    assert {"run/ft/1/commit_success.txt", "run/ft/2/commit_success.txt",
            "run/ft/2/state/manifest.ocdbt", "run/ft/2/metadata/metadata"} <= set(objects)
    assert any(name.startswith("run/ft/2/state/ocdbt.process_0/d/") for name in objects)

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            _state(0))
    with checkpoint.Checkpointer(directory) as manager:
        assert manager.all_steps() == [1, 2]
        restored = manager.restore(2, abstract)
        assert manager.metadata(2) == {"stage": "ft"}
    np.testing.assert_array_equal(restored["params"]["w"], np.full((4, 3), 2.0))
    assert int(restored["step"]) == 2

    # A save cut short leaves the step's objects without its commit file, written last.
    gcs_bucket.delete("run/ft/2/commit_success.txt")
    with checkpoint.Checkpointer(directory) as manager:
        assert manager.all_steps() == [1]


def test_a_second_claim_of_a_workdir_on_a_bucket_is_refused_and_the_lock_is_an_object(
        gcs_bucket):
    workdir = epath.Path(f"{gcs_bucket.url}/run")
    holder = workdir_lib.acquire_lock(workdir)
    assert json.loads(gcs_bucket.read("run/LOCK")) == holder
    with pytest.raises(workdir_lib.WorkdirBusyError,
                       match=rf"in use by process {os.getpid()} on host {socket.gethostname()}"
                             rf".*gcloud storage rm {gcs_bucket.url}/run/LOCK"):
        workdir_lib.acquire_lock(workdir)
    workdir_lib.release_lock(workdir, holder)
    assert "run/LOCK" not in gcs_bucket.objects("run/")


def test_of_concurrent_creates_of_one_object_exactly_one_succeeds(gcs_bucket):
    """The lock is one upload with a does-not-exist precondition, not a check then a write:
    eight threads let go at once, one wins and the object holds its text."""
    path = epath.Path(f"{gcs_bucket.url}/run/LOCK")
    start, won = threading.Barrier(8), []

    def create(index):
        start.wait()
        if storage.create_exclusive(path, f"thread {index}"):
            won.append(index)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1, won
    assert gcs_bucket.read("run/LOCK") == f"thread {won[0]}".encode()


def test_of_concurrent_takeovers_of_a_dead_runs_lock_on_a_bucket_exactly_one_wins(
        gcs_bucket, monkeypatch):
    """A dead run's lock is overwritten by one upload preconditioned on the generation read
    (not removed and created again, which lets several through): eight starts let go at once,
    one holds the workdir, the seven others find it in use."""
    won, busy = race_for_a_dead_runs_lock(epath.Path(f"{gcs_bucket.url}/run"), monkeypatch)
    assert len(won) == 1 and len(busy) == 7, (won, busy)
    assert json.loads(gcs_bucket.read("run/LOCK")) == won[0]


def test_every_start_on_a_bucket_joins_the_config_history(gcs_bucket):
    """GCS objects cannot be appended to (gcsfs would silently overwrite on open("a"))."""
    workdir = epath.Path(f"{gcs_bucket.url}/run")
    config = recipes.base(stages=("ft",), ft=recipes.stage("ft", steps=10))
    for log_every in (1, 2):
        config.ft.log_every = log_every
        with workdir_lib.claim(workdir, config):
            pass
    history = gcs_bucket.read("run/config_history.jsonl").decode().splitlines()
    assert [json.loads(line)["config"]["ft"]["log_every"] for line in history] == [1, 2]
    assert {"run/config.json", "run/config_history.jsonl"} == set(gcs_bucket.objects("run/"))


def test_tensorboard_events_on_a_bucket_are_uploaded_on_flush_and_while_scalars_come(
        gcs_bucket, monkeypatch):
    writer = storage.create_writer(epath.Path(f"{gcs_bucket.url}/run/tensorboard"))
    writer.write_scalars(1, {"ft/loss": 0.5})
    writer.flush()
    (name,) = gcs_bucket.objects("run/tensorboard/")
    assert os.path.basename(name).startswith("events.out.tfevents")
    assert b"ft/loss" in gcs_bucket.read(name)
    monkeypatch.setattr(storage, "UPLOAD_EVENTS_EVERY_SECONDS", 0.0)
    writer.write_scalars(2, {"ft/accuracy": 0.75})
    writer.flush()  # Only waits for the background write: the upload came with the scalars.
    assert b"ft/accuracy" in gcs_bucket.read(name)
    writer.close()


def test_a_missing_bucket_or_a_stopped_emulator_is_one_error_naming_bucket_and_endpoint(
        gcs_bucket):
    config = recipes.base(stages=("ft",), ft=recipes.stage("ft", steps=10))
    with pytest.raises(FileNotFoundError,
                       match=rf"Cannot lock the workdir: bucket gs://no-such-bucket does not "
                             rf"exist at {gcs_bucket.endpoint} \(from STORAGE_EMULATOR_HOST\)"):
        with workdir_lib.claim(epath.Path("gs://no-such-bucket/run"), config):
            pass
    gcs_bucket.stop()
    with pytest.raises(ConnectionError,
                       match=rf"Cannot lock the workdir on gs://wlsft-test: nothing answers at "
                             rf"{gcs_bucket.endpoint}.*; start the emulator there, or "
                             r"unset STORAGE_EMULATOR_HOST"):
        with workdir_lib.claim(epath.Path(f"{gcs_bucket.url}/run"), config):
            pass


HELD_BY_RETRIES = """
import threading
from etils import epath
from wlsft_jax import cli, storage
cli.SECONDS_TO_END_AFTER_A_REQUEST_GAVE_UP = 1.0

def requests_one_after_another():  # As orbax's save thread does: each retried half a minute.
    for name in ("a", "b", "c"):
        try:
            epath.Path(f"gs://held/run/{name}").exists()
        except Exception:
            pass

def main(argv):
    with storage.reporting("save checkpoint step 4 to gs://held/run/4", "gs://held/run"):
        thread = threading.Thread(target=requests_one_after_another)
        thread.start()
        thread.join()

cli.run(main, "held")
"""


@pytest.mark.slow
def test_a_program_held_by_requests_each_retried_is_stopped_once_one_gave_up():
    """A library thread that goes on with request after request to a bucket that does not
    answer (each retried for half a minute by gcsfs) would hold the program for minutes: it is
    stopped `cli.SECONDS_TO_END_AFTER_A_REQUEST_GAVE_UP` after the first gave up, with one line
    naming the operation under way."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # Nothing listens there.
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", HELD_BY_RETRIES], cwd=REPO, text=True,
                            capture_output=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=REPO, STORAGE_EMULATOR_HOST=endpoint))
    elapsed = time.monotonic() - started
    assert result.returncode == 2 and 25 < elapsed < 50, (elapsed, result.stderr[-3000:])
    assert re.fullmatch(
        rf"held: error: Cannot save checkpoint step 4 to gs://held/run/4: requests to "
        rf"{endpoint} \(from STORAGE_EMULATOR_HOST\) still failed after about half a minute of "
        rf"retries \(Cannot connect to host .*\); rerun the same command once gs://held answers "
        r"\(a training run resumes from its last committed checkpoint\)\. \(stopped: the bucket "
        r"still does not answer\)", result.stderr.splitlines()[-1]), result.stderr[-3000:]


def test_gs_paths_go_to_the_emulator_even_after_a_path_was_used_before_setup(
        gcs_bucket, monkeypatch, tmp_path):
    """etils picks TensorFlow's gfile (which reads no emulator variable) or gcsfs once, at the
    first path of any kind; `setup` must win over a path made before it (a local one here)."""
    from etils.epath import gpath

    monkeypatch.delenv("EPATH_USE_TF")
    gpath._is_tf_installed.cache_clear()
    assert epath.Path(tmp_path).exists()  # etils now holds "gs:// through gfile".
    storage.setup()
    (epath.Path(gcs_bucket.url) / "run" / "note.txt").write_text("through gcsfs")
    assert gcs_bucket.read("run/note.txt") == b"through gcsfs"


@pytest.mark.slow
def test_checkpoint_arrays_are_retried_through_a_short_outage_and_for_half_a_minute_at_most(
        gcs_bucket):
    """tensorstore (orbax's arrays) in the context orbax makes for it (`checkpoint` sets its GCS
    retries): a write outlives a 3 s outage of the bucket; against a bucket gone for good it
    fails after about half a minute, not tensorstore's own quarter of an hour."""
    import tensorstore as ts
    from orbax.checkpoint._src.serialization import tensorstore_utils

    kvstore = ts.KvStore.open({"driver": "gcs", "bucket": gcs_bucket.name},
                              context=tensorstore_utils.get_ts_context()).result()
    gcs_bucket.stop()
    restart = threading.Timer(3.0, gcs_bucket.start)
    restart.start()
    kvstore.write("outage/during", b"written").result(timeout=60)
    restart.join()
    assert gcs_bucket.read("outage/during") == b"written"

    gcs_bucket.stop()
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"All 5 retry attempts failed"):
        kvstore.write("outage/after", b"lost").result(timeout=60)
    assert 25 < time.monotonic() - started < 45


def _committed_steps(bucket, prefix):
    """Steps under `prefix` whose orbax commit file (the step's own, written last) exists."""
    return sorted(int(match.group(1)) for name in bucket.objects(prefix)
                  if (match := re.fullmatch(re.escape(prefix) + r"(\d+)/commit_success\.txt",
                                            name)))


def test_a_main_job_on_a_missing_bucket_stops_before_any_work_with_one_line(gcs_bucket):
    result = subprocess.run(
        [sys.executable, "-m", "wlsft_jax.main", "--config=configs/flyp_clip.py",
         "--workdir=gs://no-such-bucket/run"], cwd=REPO, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, PYTHONPATH=REPO, WLSFT_TRACEBACK=""))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (f"wlsft_jax.main: error: Cannot use the workdir: bucket gs://no-such-bucket does not "
            f"exist at {gcs_bucket.endpoint}") in result.stderr
    assert gcs_bucket.objects() == {}


TINY_FLYP = ["--config.flyp.steps=2", "--config.flyp.batch_size=16", "--config.flyp.log_every=1",
             "--config.flyp.optim.warmup_steps=1", "--config.data.image_size=16",
             "--config.data.train_examples_per_domain=32",
             "--config.data.eval_examples_per_domain=16", "--config.data.worker_count=0",
             "--config.data.ood_domains=('sketch',)", "--config.eval.alphas=(0.0,1.0)",
             "--config.eval.batch_size=16"]


@pytest.mark.slow
def test_the_main_job_on_a_bucket_writes_its_checkpoints_report_and_events_there(
        gcs_bucket, monkeypatch):
    run_main_in_process(["main", f"--config={os.path.join(REPO, 'configs', 'flyp_clip.py')}",
                         f"--workdir={gcs_bucket.url}/run", *TINY_FLYP], monkeypatch)
    objects = gcs_bucket.objects("run/")
    assert {"run/config.json", "run/config_history.jsonl", "run/flyp/2/commit_success.txt",
            "run/flyp/parameters.txt", "run/report/results.json", "run/report/report.md",
            "run/report/results.csv", "run/report/id_vs_ood.png",
            "run/tokenizer/tokenizer.json"} <= set(objects), sorted(objects)
    assert "run/LOCK" not in objects
    (events,) = [name for name in objects if name.startswith("run/tensorboard/events.out")]
    assert b"flyp/loss" in gcs_bucket.read(events) and b"report/flyp" in gcs_bucket.read(events)
    records = json.loads(gcs_bucket.read("run/report/results.json"))
    assert {(r["method"], r["alpha"]) for r in records} >= {("flyp", 0.0), ("flyp", 1.0)}


@pytest.mark.slow
def test_a_main_job_on_a_bucket_killed_by_sigkill_resumes_from_its_last_commit(gcs_bucket):
    """Killed as soon as a checkpoint is committed; the same command takes over the dead run's
    lock and resumes from the newest committed step."""
    args = [sys.executable, "-m", "wlsft_jax.main", "--config=configs/flyp_clip.py",
            f"--workdir={gcs_bucket.url}/run", *TINY_FLYP, "--config.flyp.steps=16",
            "--config.flyp.checkpoint_every=2"]
    env = dict(os.environ, PYTHONPATH=REPO)
    with open(os.devnull, "w") as devnull:
        first = subprocess.Popen(args, cwd=REPO, env=env, stdout=devnull, stderr=devnull)
    try:
        deadline = time.time() + 300
        while not _committed_steps(gcs_bucket, "run/flyp/"):
            assert first.poll() is None and time.time() < deadline, "no checkpoint in 300 s"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    committed = _committed_steps(gcs_bucket, "run/flyp/")
    assert committed[-1] < 16, "the run ended before it could be killed"
    assert "run/LOCK" in gcs_bucket.objects("run/")

    second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Taking over {gcs_bucket.url}/run/LOCK left by process {first.pid}" in second.stderr
    resumed = re.search(r"\[flyp\] resumed from step (\d+)", second.stderr)
    assert resumed and int(resumed.group(1)) == committed[-1], second.stderr[-3000:]
    objects = gcs_bucket.objects("run/")
    assert "run/flyp/16/commit_success.txt" in objects and "run/report/report.md" in objects
    assert "run/LOCK" not in objects


def _main_job(bucket, steps):
    """The command line of a tiny main job on `bucket`, checkpointing every 2 steps."""
    return [sys.executable, "-m", "wlsft_jax.main", "--config=configs/flyp_clip.py",
            f"--workdir={bucket.url}/run", *TINY_FLYP, f"--config.flyp.steps={steps}",
            "--config.flyp.checkpoint_every=2"]


def _start_until(args, log_path, ready):
    """Starts `args` (output to `log_path`); once `ready()` returns something true, returns the
    process and that."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                                   stdout=log, stderr=log)
    deadline = time.time() + 300
    while not (value := ready()):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"not ready within 300 s: {log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return process, value


def _start_until_committed(args, bucket, log_path):
    """Starts `args`; returns the process once it committed a step."""
    return _start_until(args, log_path, lambda: _committed_steps(bucket, "run/flyp/"))[0]


def _stop_bucket_until_it_ends(bucket, process, timeout):
    """Stops the emulator; returns the exit status of `process` and the seconds it took to end
    after that (killed if it outlives `timeout`)."""
    try:
        bucket.stop()
        stopped = time.monotonic()
        status = process.wait(timeout=timeout)
    finally:
        process.kill()
        process.wait()
    return status, time.monotonic() - stopped


@pytest.mark.slow
def test_a_main_job_whose_bucket_stops_answering_ends_with_one_line_and_resumes_later(
        gcs_bucket, tmp_path):
    """The emulator killed as soon as a checkpoint is committed: the run ends within the
    clients' retries (not tensorstore's quarter of an hour) with one line naming the save, the
    step and the endpoint, and leaves its lock. With the emulator back on the same objects, the
    same command takes the lock over and resumes from the last committed step."""
    args = _main_job(gcs_bucket, steps=16)
    log_path = tmp_path / "first.log"
    first = _start_until_committed(args, gcs_bucket, log_path)
    status, elapsed = _stop_bucket_until_it_ends(gcs_bucket, first, timeout=240)
    log = log_path.read_text()
    assert status == 2, log[-3000:]
    assert elapsed < 75, elapsed  # ~35 s of the save's retries, then no request more.
    last = log.splitlines()[-1]
    failed = re.fullmatch(
        rf"wlsft_jax\.main: error: Cannot save checkpoint step (\d+) to {gcs_bucket.url}/run/"
        rf"flyp/(\d+): requests to {gcs_bucket.endpoint} \(from STORAGE_EMULATOR_HOST\) still "
        r"failed after about half a minute of retries \(ClientConnectorError: Cannot connect to "
        rf"host .*\); rerun the same command once {gcs_bucket.url} answers \(a training run "
        r"resumes from its last committed checkpoint\)\. \(rerun with --traceback to see where "
        r"it came from\)", last)
    assert failed and failed.group(1) == failed.group(2), last
    assert not re.search(r'File ".*/wlsft_jax/', log), log[-3000:]  # No traceback of ours.

    gcs_bucket.start()
    committed = _committed_steps(gcs_bucket, "run/flyp/")
    assert committed and committed[-1] < int(failed.group(1)) <= 16
    assert "run/LOCK" in gcs_bucket.objects("run/")
    second = subprocess.run(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Taking over {gcs_bucket.url}/run/LOCK left by process {first.pid}" in second.stderr
    assert f"[flyp] resumed from step {committed[-1]} " in second.stderr, second.stderr[-3000:]
    objects = gcs_bucket.objects("run/")
    assert "run/flyp/16/commit_success.txt" in objects and "run/report/report.md" in objects
    assert "run/LOCK" not in objects


def _half_written_steps(bucket, prefix):
    """Steps under `prefix` with objects written but no commit file yet."""
    names = bucket.objects(prefix)
    steps = {int(match.group(1)) for name in names
             if (match := re.fullmatch(re.escape(prefix) + r"(\d+)/.+", name))}
    return sorted(step for step in steps if f"{prefix}{step}/commit_success.txt" not in names)


@pytest.mark.slow
def test_a_bucket_stopped_in_the_middle_of_a_save_leaves_a_step_the_rerun_does_not_take(
        gcs_bucket, tmp_path):
    """The emulator killed while a save has written some of a step's objects but not its commit
    file (after an earlier step committed): the run ends with the one-line error; the
    half-written step stays in the bucket, the rerun resumes from the step committed before it,
    saves that step again in full and finishes."""
    args = _main_job(gcs_bucket, steps=16)
    log_path = tmp_path / "first.log"
    first, half_written = _start_until(
        args, log_path, lambda: (_committed_steps(gcs_bucket, "run/flyp/")
                                 and _half_written_steps(gcs_bucket, "run/flyp/")))
    # orbax's save thread goes on request after request, each retried for half a minute: the
    # program is stopped 30 s after the first gave up (`cli`), if it has not ended by then.
    status, elapsed = _stop_bucket_until_it_ends(gcs_bucket, first, timeout=120)
    log = log_path.read_text()
    assert status == 2 and elapsed < 75, (elapsed, log[-3000:])
    last = log.splitlines()[-1]
    assert re.fullmatch(
        r"wlsft_jax\.main: error: Cannot .*: requests to .* still failed after about half a "
        rf"minute of retries \(.*\); rerun the same command once {gcs_bucket.url} answers .*",
        last), last

    gcs_bucket.start()
    step = half_written[-1]
    assert step in _half_written_steps(gcs_bucket, "run/flyp/")  # Still there, uncommitted.
    committed = _committed_steps(gcs_bucket, "run/flyp/")
    assert committed and committed[-1] < step
    second = subprocess.run(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"[flyp] resumed from step {committed[-1]} " in second.stderr, second.stderr[-3000:]
    assert _committed_steps(gcs_bucket, "run/flyp/")[-1] == 16
    assert not _half_written_steps(gcs_bucket, "run/flyp/")  # Step `step` saved again in full.


@pytest.mark.slow
def test_a_main_job_outlives_its_bucket_stopping_for_a_few_seconds(gcs_bucket, tmp_path):
    """The emulator killed as soon as a checkpoint is committed and started again on the same
    objects 5 s later: the saves in between are retried (by gcsfs and tensorstore) and the run
    completes as if nothing happened."""
    log_path = tmp_path / "run.log"
    process = _start_until_committed(_main_job(gcs_bucket, steps=16), gcs_bucket, log_path)
    try:
        gcs_bucket.stop()
        time.sleep(5)
        assert process.poll() is None, log_path.read_text()[-3000:]  # It lived through it.
        gcs_bucket.start()
        status = process.wait(timeout=300)
    finally:
        process.kill()
        process.wait()
    log = log_path.read_text()
    assert status == 0, log[-3000:]
    assert "error" not in log.lower(), log[-3000:]
    assert _committed_steps(gcs_bucket, "run/flyp/")[-1] == 16
    objects = gcs_bucket.objects("run/")
    assert "run/report/report.md" in objects and "run/LOCK" not in objects


def _upload(local, remote):
    """Copies every file under the local folder `local` to the gs:// folder `remote`, object by
    object (as `gcloud storage cp -r` would)."""
    local = pathlib.Path(local)
    for file in sorted(local.rglob("*")):
        if file.is_file():
            (epath.Path(remote) / file.relative_to(local).as_posix()).write_bytes(
                file.read_bytes())


def _sweep_cells(bucket, name):
    """(method, alpha, dataset) of the records in the bucket's results.json `name`, if any."""
    if name not in bucket.objects(name):
        return set()
    return {(r["method"], r["alpha"], r["dataset"]) for r in json.loads(bucket.read(name))}


@pytest.mark.slow
def test_a_sweep_of_a_glob_on_a_bucket_killed_half_way_completes_only_the_missing_cells(
        runs, gcs_bucket, tmp_path):
    """launch/sweep.py over gs://.../runs/*/f* into gs://.../sweep, killed after 2 of its 8
    cells; the rerun evaluates the other cells only, and the results and the report are in the
    bucket, with the values a local sweep of the same checkpoints gives."""
    for name, remote in (("pretrain", "pretrain"), ("flyp", "runs/a/flyp"), ("ft", "runs/b/ft")):
        _upload(runs / name, f"{gcs_bucket.url}/{remote}")
    checkpoints, out = f"{gcs_bucket.url}/runs/*/f*", f"{gcs_bucket.url}/sweep"
    alphas, pretrained = (0.0, 1.0), f"{gcs_bucket.url}/pretrain"
    every_cell = {(method, alpha, dataset) for method in ("flyp", "ft") for alpha in alphas
                  for dataset in DATASETS}
    argv = [f"--config={SWEEP_CONFIG}", *SWEEP_TINY, f"--checkpoints={checkpoints}",
            "--alphas=0,1", f"--datasets={','.join(DATASETS)}", f"--pretrained={pretrained}",
            f"--out={out}"]
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:  # test_sweep.py as a script: each cell slowed by 2 s.
        process = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "test_sweep.py"), "2.0", *argv],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=log, stderr=log)
    try:
        deadline = time.time() + 300
        while len(_sweep_cells(gcs_bucket, "sweep/results.json")) < 2:
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "fewer than 2 cells within 300 s"
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    before = _sweep_cells(gcs_bucket, "sweep/results.json")
    assert 2 <= len(before) < 8, before
    assert "sweep/report/report.md" not in gcs_bucket.objects("sweep/")

    def run_sweep(checkpoints, pretrained, out):
        plan = sweep.plan(load(SWEEP_CONFIG, *SWEEP_TINY), checkpoints=checkpoints,
                          alphas=alphas, datasets=DATASETS, pretrained=pretrained)
        mesh = sharding.make_mesh(**plan.config.mesh)
        with jax.set_mesh(mesh):
            return sweep.run(plan, out=out, mesh=mesh)

    outcome = run_sweep([checkpoints], pretrained, out)
    assert {(c.method, c.alpha, c.dataset) for c in outcome.evaluated} == every_cell - before
    assert outcome.failures == []
    objects = gcs_bucket.objects("sweep/")
    assert {"sweep/results.json", "sweep/failures.json", "sweep/checkpoints.json",
            "sweep/config.json", "sweep/report/report.md", "sweep/report/results.csv",
            "sweep/report/id_vs_ood.png", "sweep/report/top1_vs_alpha.png"} <= set(objects), (
        sorted(objects))
    assert json.loads(gcs_bucket.read("sweep/failures.json")) == []
    assert json.loads(gcs_bucket.read("sweep/checkpoints.json")) == {
        f"{gcs_bucket.url}/runs/a/flyp": "flyp", f"{gcs_bucket.url}/runs/b/ft": "ft"}
    assert b"| flyp | 1 |" in gcs_bucket.read("sweep/report/report.md")
    records = json.loads(gcs_bucket.read("sweep/results.json"))
    assert _sweep_cells(gcs_bucket, "sweep/results.json") == every_cell

    local = run_sweep([str(runs / "flyp"), str(runs / "ft")], str(runs / "pretrain"),
                      tmp_path / "local")
    values = lambda records: {(r["method"], r["alpha"], r["dataset"], r["metric"]): r["value"]
                              for r in records}
    assert len(local.evaluated) == 8
    assert values(records) == values(json.loads((tmp_path / "local" / "results.json").read_text()))


def _as_numpy(params):
    return {name: np.asarray(value) for name, value in flat(params).items()}


def test_init_path_on_a_bucket_reads_a_hugging_face_clip_as_its_local_copy(gcs_bucket, tmp_path):
    """init.format=hf_clip with init.path=gs://...: the weights (config.json and
    model.safetensors) and the CLIP BPE beside them (vocab.json, merges.txt) are read from the
    bucket and give what the local copy gives."""
    local = tmp_path / "clip"
    local.mkdir()
    vocab_json, _ = write_small_clip_files(local)
    vocab_size = len(json.loads(vocab_json.read_text()))
    model = two_towers.Model(
        image=dict(variant=None, width=32, depth=1, mlp_dim=48, num_heads=2, patch_size=8,
                   image_size=16, ln_pre=True, patch_bias=False, act="quick_gelu"),
        text=dict(variant=None, width=32, depth=1, mlp_dim=48, num_heads=2,
                  vocab_size=vocab_size, context_length=16, eot_id=vocab_size - 1,
                  act="quick_gelu"),
        out_dim=16)
    params = random_params(model, jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16), jnp.int32))
    convert.to_hf_clip(model, params, str(local))
    _upload(local, f"{gcs_bucket.url}/clip")
    assert set(gcs_bucket.objects("clip/")) == {"clip/config.json", "clip/model.safetensors",
                                                "clip/vocab.json", "clip/merges.txt"}
    assert gcs_bucket.read("clip/model.safetensors") == (local / "model.safetensors").read_bytes()

    loaded = {}
    for where in (str(local), f"{gcs_bucket.url}/clip"):
        config = load(SWEEP_CONFIG, "--config.init.format=hf_clip", f"--config.init.path={where}",
                      "--config.init.name=", "--config.tokenizer.kind=clip_bpe",
                      "--config.tokenizer.context_length=16", "--config.data.image_size=16")
        tokenizer = context_lib.build_tokenizer(config, epath.Path(tmp_path / "unused"))
        models, initial = context_lib.initial_weights(config, tokenizer, num_classes=3)
        loaded[where] = (tokenizer.encode(["a photo of the cat"]), models, _as_numpy(initial))
    (local_tokens, local_models, local_params), (tokens, models, remote_params) = (
        loaded.values())
    np.testing.assert_array_equal(tokens, local_tokens)
    assert models == local_models
    assert remote_params.keys() == local_params.keys() == _as_numpy(params).keys()
    for name, value in remote_params.items():
        np.testing.assert_array_equal(value, local_params[name], err_msg=name)
        np.testing.assert_allclose(value, _as_numpy(params)[name], atol=1e-7, err_msg=name)


def test_init_path_on_a_bucket_reads_a_big_vision_npz_as_its_local_copy(gcs_bucket, tmp_path):
    """init.format=big_vision with init.path=gs://.../vit.npz: the image tower (its head
    dropped) equals the local copy's and the weights written."""
    model = vit.Model(variant=None, width=32, depth=2, mlp_dim=48, num_heads=2, patch_size=4,
                      image_size=16, num_classes=5, act="gelu_tanh")
    params = random_params(model, jnp.zeros((1, 16, 16, 3)))
    (tmp_path / "big_vision").mkdir()
    local = tmp_path / "big_vision" / "vit.npz"
    convert.to_big_vision_npz(params, str(local))
    _upload(local.parent, f"{gcs_bucket.url}/big_vision")
    assert gcs_bucket.read("big_vision/vit.npz") == local.read_bytes()

    loaded = {}
    for where in (str(local), f"{gcs_bucket.url}/big_vision/vit.npz"):
        config = load(SWEEP_CONFIG, "--config.init.format=big_vision",
                      f"--config.init.path={where}", "--config.init.name=",
                      "--config.data.image_size=16")
        models, initial = context_lib.initial_weights(config, None, num_classes=3)
        loaded[where] = (models, _as_numpy(initial))
    (local_models, local_params), (models, remote_params) = loaded.values()
    assert models == local_models and set(models) == {"classifier"}
    written = {f"img/{name}": value for name, value in _as_numpy(params).items()
               if not name.startswith("head/")}
    assert remote_params.keys() == local_params.keys() == written.keys()
    for name, value in remote_params.items():
        np.testing.assert_array_equal(value, local_params[name], err_msg=name)
        np.testing.assert_array_equal(value, written[name], err_msg=name)
