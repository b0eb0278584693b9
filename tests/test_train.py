"""The training loop (`train.run`): sharding parity, SIGKILL resume, freezing, gradient
accumulation, the NaN stop, determinism.

Every run is a real `train.run` of a tiny model on the embedded world (16-px images, a one-block
ViT, batch 16, 6 steps). This file is also the script that the SIGKILL test kills and restarts:
`python tests/test_train.py WORKDIR LOSSES_JSONL PARAMS_NPZ SECONDS_PER_STEP`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from wlsft_jax import (checkpoint, context as context_lib, methods, objectives, recipes,
                       sharding, train)
from helpers import RecordingWriter, flat, saved_state, world_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_IMAGE = dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8)
TINY_TEXT = dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2)
LP_SCHEDULE = [("head/.*", {}), (".*", None)]


def tiny_config(method_name="ft", *, seed=0, **stage_overrides):
    """A one-stage config of `method_name` on 16-px images with a one-block model."""
    stage = dict(steps=6, batch_size=16, log_every=1, checkpoint_every=2, keep_checkpoints=2)
    stage.update(stage_overrides)
    optim_overrides = dict(dict(lr=1e-3, warmup_steps=1), **stage.pop("optim", {}))
    config = recipes.base(stages=(method_name,), **{
        method_name: recipes.stage(method_name, optim=optim_overrides, **stage)})
    config.seed = seed
    config.data = recipes.world_data(image_size=16, train_examples_per_domain=64, worker_count=0)
    config.model = recipes.tiny_clip(img=TINY_IMAGE, txt=TINY_TEXT, embed_dim=32)
    return config


def train_run(config, workdir, *, mesh=None, writer=None, loss_fn=None):
    """`train.run` of the config's one stage from fresh params.

    Returns (initial params, trained params, writer), params on the host.
    """
    mesh = mesh or sharding.make_mesh(data=1, devices=jax.devices()[:1])
    writer = writer or RecordingWriter()
    (name,) = config.stages
    stage_config = config[name]
    context = context_lib.Context(config, workdir=epath.Path(workdir), mesh=mesh)
    context.tokenizer = world_tokenizer()
    spec = methods.get(stage_config.method).build(context, name, stage_config).spec
    if loss_fn is not None:
        spec = dataclasses.replace(spec, loss_fn=loss_fn)
    init_params = _initial_params(spec, config.seed)
    with jax.set_mesh(mesh):
        params = train.run(name=name, stage_config=stage_config, spec=spec,
                           init_params=init_params, mesh=mesh, workdir=epath.Path(workdir),
                           seed=config.seed, writer=writer)
    return init_params, jax.device_get(params), writer


_INITIAL_PARAMS = {}


def _initial_params(spec, seed):
    """Fresh params of the spec's model (host arrays), initialised once per model and seed."""
    key = (type(spec.model).__module__, seed)
    if key not in _INITIAL_PARAMS:
        one_device = sharding.make_mesh(data=1, devices=jax.devices()[:1])
        _INITIAL_PARAMS[key] = jax.device_get(spec.init_params(one_device, seed))
    return _INITIAL_PARAMS[key]


def assert_trees_equal(a, b, atol=0.0):
    """Bitwise equal (atol=0) or equal within `atol`, leaf by leaf."""
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for path in a:
        if atol:
            np.testing.assert_allclose(a[path], b[path], rtol=0, atol=atol, err_msg=path)
        else:
            np.testing.assert_array_equal(a[path], b[path], err_msg=path)


@pytest.fixture(scope="module")
def ft_baseline(tmp_path_factory):
    """The reference run: FT, 6 steps of batch 16 on one device, seed 0."""
    workdir = tmp_path_factory.mktemp("ft_baseline")
    init_params, params, writer = train_run(tiny_config("ft"), workdir)
    return dict(init=init_params, params=params, losses=writer.losses("ft"), workdir=workdir)


def test_each_checkpoint_records_what_the_stage_started_from(ft_baseline):
    with checkpoint.Checkpointer(ft_baseline["workdir"]) as manager:
        recorded = manager.metadata(6)
    assert recorded["stage"] == "ft"
    assert recorded["init_img_sha256"] == checkpoint.tree_sha256(ft_baseline["init"]["img"])
    assert recorded["init_img_sha256"] != checkpoint.tree_sha256(ft_baseline["params"]["img"])


def test_same_config_and_seed_give_bitwise_the_same_run(ft_baseline, tmp_path):
    _, params, writer = train_run(tiny_config("ft"), tmp_path)
    assert sorted(ft_baseline["losses"]) == list(range(1, 7))
    assert writer.losses("ft") == ft_baseline["losses"]
    assert_trees_equal(params, ft_baseline["params"])
    # ... and the run did train: the params moved and the loss changed.
    moved = flat(params)["head/kernel"] - flat(ft_baseline["init"])["head/kernel"]
    assert np.abs(moved).max() > 1e-4
    assert len(set(writer.losses("ft").values())) == 6


@pytest.mark.slow
def test_sharded_data_4_fsdp_2_matches_one_device(ft_baseline, tmp_path):
    mesh = sharding.make_mesh(data=4, fsdp=2)
    _, params, writer = train_run(tiny_config("ft"), tmp_path, mesh=mesh)
    losses = writer.losses("ft")
    assert losses.keys() == ft_baseline["losses"].keys()
    np.testing.assert_allclose(list(losses.values()), list(ft_baseline["losses"].values()),
                               rtol=0, atol=1e-5)
    assert_trees_equal(params, ft_baseline["params"], atol=1e-5)


def test_gradient_accumulation_over_4_micro_batches_equals_one_batch(ft_baseline, tmp_path):
    _, params, writer = train_run(tiny_config("ft", accum_steps=4), tmp_path)
    losses = writer.losses("ft")
    np.testing.assert_allclose(list(losses.values()), list(ft_baseline["losses"].values()),
                               rtol=0, atol=1e-5)
    assert_trees_equal(params, ft_baseline["params"], atol=1e-5)


def test_a_head_only_schedule_leaves_frozen_params_bitwise_and_without_optimizer_state(
        tmp_path):
    config = tiny_config("ft", optim=dict(lr=1e-2, wd=0.0, schedule=LP_SCHEDULE))
    init_params, params, _ = train_run(config, tmp_path)
    init_params, params = flat(init_params), flat(params)
    for path in params:
        if path.startswith("head/"):
            assert np.abs(params[path] - init_params[path]).max() > 1e-4, path
        else:
            np.testing.assert_array_equal(params[path], init_params[path], err_msg=path)
    opt_state = list(flat(saved_state(tmp_path, 6)["opt_state"]))
    with_param_path = [p for p in opt_state if "/mu/" in p or "/nu/" in p]
    assert with_param_path and all("/img/" not in p for p in opt_state), opt_state
    assert {p.rsplit("/", 2)[-2] for p in with_param_path} == {"head"}


def _nan_at_step(step, seed):
    """A classification loss that is NaN at training step `step`.

    The step is recognised by the rng the loop hands the loss at that step:
    `fold_in(key(seed), step - 1)` (steps count from 1, the state's step counter from 0).
    """
    bad_rng = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), step - 1))

    def loss_fn(model, params, batch, rng):
        loss, metrics = objectives.classification_loss(model, params, batch, rng)
        is_bad = jnp.all(jax.random.key_data(rng) == bad_rng)
        return jnp.where(is_bad, jnp.nan, loss), metrics

    return loss_fn


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(ft_baseline, tmp_path):
    with pytest.raises(train.NonFiniteLossError, match=r"loss is nan .*at step 5\b"):
        train_run(tiny_config("ft", checkpoint_every=2), tmp_path, loss_fn=_nan_at_step(5, 0))
    steps = sorted(int(d.name) for d in tmp_path.iterdir() if d.name.isdigit())
    assert steps == [2, 4]
    # The checkpoint of step 4 holds what the unpoisoned baseline run saved at step 4, and it
    # restores: a 4-step run resumes there and stops at once.
    kept = saved_state(tmp_path, 4)
    assert_trees_equal(kept, saved_state(ft_baseline["workdir"], 4))
    _, resumed, _ = train_run(tiny_config("ft", steps=4), tmp_path)
    assert_trees_equal(resumed, kept["params"])


def _truncate_array_files(step_dir):
    for path in (step_dir / "state" / "ocdbt.process_0" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:20])


def _delete_manifests(step_dir):
    for path in (step_dir / "state").rglob("manifest.ocdbt"):
        path.unlink()


def _delete(relative_path):
    def damage(step_dir):
        (step_dir / relative_path).unlink()
    damage.__name__ = f"delete_{relative_path.replace('/', '_')}"
    return damage


def _corrupt_data_position(step_dir):
    (step_dir / "data" / "process_0-of-1.json").write_text("{not json")


@pytest.mark.parametrize("damage", [
    _delete("state/_sharding"), _delete("_CHECKPOINT_METADATA"), _delete("commit_success.txt")],
    ids=lambda damage: damage.__name__)
def test_a_checkpoint_missing_a_file_that_restoring_does_not_need_still_restores(
        ft_baseline, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(ft_baseline["workdir"], workdir)
    damage(workdir / "6")
    _, params, writer = train_run(tiny_config("ft"), workdir)
    assert not writer.losses("ft") and not list(workdir.glob("*.corrupt"))
    assert_trees_equal(params, ft_baseline["params"])


@pytest.mark.parametrize("damage", [
    _truncate_array_files, _delete_manifests, _delete("state/_METADATA")],
    ids=lambda damage: damage.__name__)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_an_older_one(
        ft_baseline, tmp_path, damage, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(ft_baseline["workdir"], workdir)  # Steps 4 and 6 (the finished stage).
    damage(workdir / "6")
    with caplog.at_level("WARNING"):
        _, params, writer = train_run(tiny_config("ft"), workdir)
    assert "step 6 does not restore" in caplog.text and "resuming from step 4" in caplog.text
    assert (workdir / "6.corrupt").is_dir()
    assert sorted(writer.losses("ft")) == [5, 6]
    assert writer.losses("ft") == {5: ft_baseline["losses"][5], 6: ft_baseline["losses"][6]}
    assert_trees_equal(params, ft_baseline["params"])


@pytest.mark.parametrize("damage", [_truncate_array_files, _corrupt_data_position])
def test_when_no_checkpoint_restores_nothing_is_moved_and_the_error_is_one_line(
        ft_baseline, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(ft_baseline["workdir"], workdir)
    shutil.rmtree(workdir / "6")
    damage(workdir / "4")
    with pytest.raises(train.CheckpointError,
                       match=r"no checkpoint in .* restores \(steps \[4\]\)") as error:
        train_run(tiny_config("ft"), workdir)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == ["4"]


def _resume_test_run(workdir, losses_path, params_path, delay):
    """The baseline FT run, logging losses to `losses_path`; its final params go to an .npz."""
    writer = RecordingWriter(losses_path, delay=float(delay))
    _, params, _ = train_run(tiny_config("ft"), workdir, writer=writer)
    np.savez(params_path, **flat(params))


def _start_resume_test_run(tmp_path, delay, log_name):
    """This file as a script in a new process (same 8 CPU devices); its stderr goes to a file."""
    script = [sys.executable, os.path.abspath(__file__), str(tmp_path / "workdir"),
              str(tmp_path / "losses.jsonl"), str(tmp_path / "params.npz"), str(delay)]
    env = dict(os.environ, PYTHONPATH=REPO)
    with open(tmp_path / log_name, "w") as log:
        return subprocess.Popen(script, cwd=REPO, env=env, stdout=log, stderr=log)


def _logged_losses(path):
    """(pid, step, loss) of every loss the subprocess runs logged, in order."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["pid"], r["step"], r["ft/loss"]) for r in records if "ft/loss" in r]


def _committed_steps(workdir):
    return sorted(int(d.name) for d in workdir.iterdir() if d.name.isdigit()) \
        if workdir.exists() else []


@pytest.mark.slow
def test_run_killed_by_sigkill_resumes_to_bitwise_the_same_result(ft_baseline, tmp_path):
    # A run slowed to >= 1 s a step, killed as soon as its first checkpoint is committed.
    workdir = tmp_path / "workdir"
    process = _start_resume_test_run(tmp_path, delay=1.0, log_name="first.log")
    deadline = time.time() + 300
    while not _committed_steps(workdir):
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first_pid = process.pid
    killed_at = _committed_steps(workdir)[-1]
    assert killed_at < 6, "the run ended before it could be killed"
    first_run = _logged_losses(tmp_path / "losses.jsonl")
    assert not (tmp_path / "params.npz").exists()

    process = _start_resume_test_run(tmp_path, delay=0.0, log_name="second.log")
    assert process.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    losses = _logged_losses(tmp_path / "losses.jsonl")
    second_run = losses[len(first_run):]
    assert {pid for pid, _, _ in first_run} == {first_pid}
    assert {pid for pid, _, _ in second_run} == {process.pid}
    # The restart resumed from the last checkpoint (not from step 1) and ran to the end ...
    assert [step for _, step, _ in second_run] == list(range(killed_at + 1, 7))
    # ... on the same batches: every logged loss, before and after the kill, is the baseline's.
    for _, step, loss in losses:
        assert loss == ft_baseline["losses"][step], (step, loss)
    with np.load(tmp_path / "params.npz") as params:
        final = dict(params)
    assert_trees_equal(final, flat(ft_baseline["params"]))


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    _resume_test_run(*sys.argv[1:])
