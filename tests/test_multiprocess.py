"""Multi-host: `wlsft_jax.main` on 2 processes x 4 CPU devices trains like 1 process x 8 devices.

Real processes on localhost, joined by a local `jax.distributed` coordinator (gloo collectives
on CPU), each reading its own part of the data; the test reads their orbax checkpoints back in
this (single) process on another mesh, and resumes the 2-process workdir with 1 process.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from wlsft_jax import checkpoint, context as context_lib, methods, optim, sharding
from helpers import free_port

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO_ROOT, "configs", "pretrain_clip.py")
STEPS = 3
# The embedded default (pretraining, then zero-shot ID/OOD evaluation), made tiny.
OVERRIDES = {
    "pretrain.steps": STEPS,
    "pretrain.batch_size": 16,
    "pretrain.checkpoint_every": 2,
    "pretrain.log_every": 1,
    "pretrain.optim.warmup_steps": 1,
    # Adam turns round-off-sized gradients into lr-sized steps: the attention key bias, whose
    # exact gradient is zero (softmax ignores a per-row constant), moves by up to ~0.02 lr on noise
    # that depends on the reduction order. lr=1e-4 keeps that well under TOLERANCE.
    "pretrain.optim.lr": 1e-4,
    "data.train_examples_per_domain": 16,
    "data.eval_examples_per_domain": 16,
    "data.worker_count": 0,
    "data.ood_domains": ("sketch",),
    "eval.batch_size": 16,
    "model.img.variant": "mu/8",
    "model.txt.width": 64,
    "model.txt.depth": 1,
    "model.txt.num_heads": 2,
    "model.txt.mlp_dim": 128,
    "model.embed_dim": 32,
}
TIMEOUT_S = 400
TOLERANCE = 1e-5


def _start_main(workdir, *, devices, log_path, distributed=()):
    """`python -m wlsft_jax.main` with OVERRIDES in a fresh process with `devices` CPU devices."""
    flags = [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
    flags += [f"--config.distributed.{key}={value}" for key, value in distributed]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "wlsft_jax.main", f"--config={CONFIG_FILE}",
             f"--workdir={workdir}", *flags],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(runs):
    """Waits for every (process, log path); fails with the log tail of any that failed."""
    for process, log_path in runs:
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other, _ in runs:
                other.kill()
            raise
        log = epath.Path(log_path).read_text()
        assert process.returncode == 0, f"{log_path} exited {process.returncode}:\n{log[-4000:]}"


def _config():
    spec = importlib.util.spec_from_file_location("pretrain_clip", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in OVERRIDES.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def _restore(workdir, step, mesh):
    """The pretraining state saved at `step` in `workdir`, laid out on `mesh` (this process)."""
    config = _config()
    context = context_lib.Context(config, workdir=epath.Path(workdir), mesh=mesh)
    method = methods.get("pretrain").build(context, "pretrain", config.pretrain).spec
    params = nn.unbox(method.abstract_params())
    tx, _ = optim.make_optimizer(config.pretrain.optim, params, total_steps=STEPS)
    param_shardings = method.param_shardings(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    shapes = dict(params=params, opt_state=jax.eval_shape(tx.init, params),
                  step=jax.ShapeDtypeStruct((), jnp.int32),
                  rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
    shardings = dict(params=param_shardings,
                     opt_state=sharding.opt_state_shardings(tx, params, param_shardings),
                     step=replicated, rng=replicated)
    with checkpoint.Checkpointer(epath.Path(workdir) / "pretrain") as manager:
        return manager.restore(step, checkpoint.restore_target(shapes, shardings))


def _max_difference(a, b):
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_restores_on_one(tmp_path):
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    port = free_port()
    runs = [
        (_start_main(two, devices=4, log_path=tmp_path / f"two_{pid}.log", distributed=(
            ("initialize", True), ("coordinator_address", f"localhost:{port}"),
            ("num_processes", 2), ("process_id", pid))), tmp_path / f"two_{pid}.log")
        for pid in range(2)
    ]
    runs.append((_start_main(one, devices=8, log_path=tmp_path / "one.log"),
                 tmp_path / "one.log"))
    _wait(runs)

    # Process 0 alone writes the report; each process saved its own data position.
    assert "| zeroshot |" in (tmp_path / "two_0.log").read_text()
    assert "| zeroshot |" not in (tmp_path / "two_1.log").read_text()
    assert sorted(os.listdir(two / "pretrain" / str(STEPS) / "data")) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]

    # Both checkpoints restore here, on 1 process, fully sharded over fsdp instead of data.
    mesh = sharding.make_mesh(data=1, fsdp=8)
    two_state, one_state = _restore(two, STEPS, mesh), _restore(one, STEPS, mesh)
    assert int(two_state["step"]) == int(one_state["step"]) == STEPS
    np.testing.assert_array_equal(two_state["rng"], one_state["rng"])
    kernel = two_state["params"]["img"]["encoderblock_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp"
    assert _max_difference(two_state["params"], one_state["params"]) <= TOLERANCE
    assert _max_difference(two_state["opt_state"], one_state["opt_state"]) <= TOLERANCE
    # ... and the comparison is not vacuous: the last step alone moved the params by more.
    earlier = _restore(two, STEPS - 1, mesh)
    assert _max_difference(earlier["params"], two_state["params"]) > 2 * TOLERANCE

    # A 1-process run on the 2-process workdir takes the finished stage from its checkpoint
    # (no retraining) and reports the same accuracies.
    report = json.loads((two / "report" / "results.json").read_text())
    shutil.rmtree(two / "report")
    rerun_log = tmp_path / "rerun.log"
    _wait([(_start_main(two, devices=8, log_path=rerun_log), rerun_log)])
    assert "resumed from step 3" in rerun_log.read_text()
    assert json.loads((two / "report" / "results.json").read_text()) == report
