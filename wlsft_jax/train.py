"""The one training loop: every method (`wlsft_jax.methods`) runs through it.

Flat on purpose, in the manner of big_vision's trainer: read it top to bottom. A method only
supplies a `TrainSpec` (model, loss, input operations); what to train and how is the stage's
optimizer config (`wlsft_jax.optim`, regex schedule with `None` = frozen).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from etils import epath

from wlsft_jax import checkpoint, optim, sharding
from wlsft_jax.data import pipeline
from wlsft_jax.models import overview

EVAL_CURVE = "eval_curve.jsonl"  # A stage's periodic evaluations, one JSON line each.


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """What the training loop needs from a method: its model, loss and data."""
    model: nn.Module
    example_inputs: tuple  # Arguments after the rng for `model.init` (shapes only matter).
    loss_fn: Callable  # (model, params, batch, rng) -> (loss, metrics)
    train_source: Any  # A grain RandomAccessDataSource.
    train_operations: Sequence  # Per-example grain transforms, batching is the loader's.
    worker_count: int
    # (params, metrics, step) -> (params, metrics) after every optimizer step, inside the jitted
    # step: DINO's momentum teacher. Metrics it consumes are removed.
    after_step: Callable | None = None
    # params -> params applied to fresh params (DINO's teacher starts as the student).
    after_init: Callable | None = None

    def loss(self, params, batch, rng):
        return self.loss_fn(self.model, params, batch, rng)

    def abstract_params(self):
        """`jax.eval_shape` of the init, boxed with logical axis names."""
        return jax.eval_shape(self.model.init, jax.random.key(0), *self.example_inputs)["params"]

    def param_shardings(self, mesh):
        return sharding.logical_shardings(mesh, self.abstract_params())

    def init_params(self, mesh, seed):
        """Fresh params, created directly sharded on `mesh` (for training from scratch)."""
        def init(rng):
            params = nn.unbox(self.model.init(rng, *self.example_inputs)["params"])
            return self.after_init(params) if self.after_init else params
        return jax.jit(init, out_shardings=self.param_shardings(mesh))(jax.random.key(seed))


class CheckpointError(ValueError):
    """No checkpoint of a stage restores."""


def _resume(manager, target, fresh_state, steps, make_data_iter, name):
    """(step, state, data iterator or None) from the newest checkpoint that restores, or
    (0, `fresh_state`, a new iterator) when there is none.

    A newer checkpoint that fails to restore while an older one restores is damaged (a truncated
    or deleted file): it is set aside as `<step>.corrupt` with a warning. When none restores,
    nothing is moved (the cause may be the code, not the files) and CheckpointError says why.
    A finished stage restores without its data position (so also on another process count).
    """
    failures, data_iter = [], None
    for step in reversed(manager.all_steps()):
        if step < steps and data_iter is None:
            data_iter = make_data_iter()
        try:
            state = manager.restore(step, target, data_iter if step < steps else None)
        except Exception as error:  # orbax / tensorstore raise many kinds for damaged files.
            failures.append((step, error))
            continue
        for bad_step, error in failures:  # One process moves the shared directory.
            moved = manager.set_aside(bad_step) if jax.process_index() == 0 else "<step>.corrupt"
            logging.warning("[%s] the checkpoint at step %d does not restore (%s); moved to %s, "
                            "resuming from step %d.", name, bad_step,
                            checkpoint.error_line(error), moved, step)
        return step, state, data_iter
    if failures:
        step, error = failures[0]
        manager.close()
        raise CheckpointError(
            f"[{name}] no checkpoint in {manager.directory} restores (steps "
            f"{[s for s, _ in failures]}); the newest, step {step}, fails with "
            f"{checkpoint.error_line(error, 300)}. Use a new --workdir, or move the step "
            "directories aside to start the stage over.")
    return 0, fresh_state, make_data_iter()


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


def _accumulated_grads(loss_fn, params, batch, accum_steps):
    """Mean loss/metrics/gradients over `accum_steps` equal micro-batches of `batch`.

    Micro-batch i takes rows i, i + A, i + 2A, ... so that each one stays spread evenly over the
    data-sharded batch axis (no re-sharding between micro-batches).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        return grad_fn(params, batch)

    def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    micro_batches = jax.tree.map(split, batch)

    def accumulate(carry, micro_batch):
        (loss, metrics), grads = grad_fn(params, micro_batch)
        return jax.tree.map(jnp.add, carry, ((loss, metrics), grads)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    rest = jax.tree.map(lambda x: x[1:], micro_batches)
    total, _ = jax.lax.scan(accumulate, grad_fn(params, first), rest)
    return jax.tree.map(lambda x: x / accum_steps, total)


def make_train_step(spec, tx, frozen_mask, accum_steps):
    """(state, batch) -> (state, metrics).

    Frozen leaves get no gradient (`stop_gradient`, so XLA drops their backward pass) and are
    carried over untouched, bitwise; the optimizer holds no state for them (`optim`).
    """

    def train_step(state, batch):
        params = state["params"]
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_fn(params, micro_batch):
            params = jax.tree.map(lambda frozen, p: jax.lax.stop_gradient(p) if frozen else p,
                                  frozen_mask, params)
            return spec.loss(params, micro_batch, step_rng)

        (loss, metrics), grads = _accumulated_grads(loss_fn, params, batch, accum_steps)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        updated = optax.apply_updates(params, updates)
        params = jax.tree.map(lambda frozen, old, new: old if frozen else new,
                              frozen_mask, params, updated)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        if spec.after_step:
            params, metrics = spec.after_step(params, metrics, state["step"])
        return dict(state, params=params, opt_state=opt_state, step=state["step"] + 1), metrics

    return train_step


def read_eval_curve(workdir) -> list[dict]:
    """The periodic evaluations a stage recorded in `workdir`: [{"step": s, "val/photo": ...}]."""
    path = epath.Path(workdir) / EVAL_CURVE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_eval_curve(workdir, curve: list[dict]) -> None:
    """`curve` (one dict per evaluation, with its "step") as the stage's eval_curve.jsonl."""
    if jax.process_index() == 0:
        (epath.Path(workdir) / EVAL_CURVE).write_text(
            "".join(json.dumps(row) + "\n" for row in curve))


def run(*, name, stage_config, spec, init_params, mesh, workdir, seed, writer,
        periodic_eval=None, init_source: str = ""):
    """Trains `init_params` for one stage; resumes from `workdir` if it holds checkpoints.

    Returns the trained params (sharded on `mesh`). `writer` is a clu MetricWriter. Each
    checkpoint records `checkpoint.provenance` (`init_source` says what `init_params` are).
    `periodic_eval(params) -> {name: value}` runs every `stage_config.eval_every` steps (when
    set) and at the last step; its values are written (and logged) under `<stage>/eval/` and kept,
    one JSON line per evaluation, in `<workdir>/eval_curve.jsonl` (a resumed stage rewrites
    the lines past its checkpoint).
    """
    steps = stage_config.steps
    batch_size = stage_config.batch_size
    accum_steps = stage_config.accum_steps
    if batch_size % accum_steps:
        raise ValueError(f"{name}: batch_size {batch_size} does not split into "
                         f"accum_steps={accum_steps} equal micro-batches.")
    sharding.check_global_batch_size(mesh, batch_size // accum_steps)

    # --- Optimizer and sharded state -------------------------------------------------------
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        overview.log_param_counts(init_params, name=name, table_path=workdir / "parameters.txt")
    tx, lr_schedule = optim.make_optimizer(stage_config.optim, init_params, total_steps=steps)
    frozen_mask = optim.frozen_mask(stage_config.optim, init_params)
    param_shardings = spec.param_shardings(mesh)
    # A copy: the step donates its state, and the caller may still need `init_params`.
    params = jax.device_put(init_params, param_shardings, may_alias=False)
    opt_state_shardings = sharding.opt_state_shardings(tx, params, param_shardings)
    opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings)(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = dict(
        params=params,
        opt_state=opt_state,
        step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
        rng=jax.device_put(jax.random.key_data(jax.random.key(seed)), replicated),
    )
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    # --- Resume ----------------------------------------------------------------------------------
    manager = checkpoint.Checkpointer(workdir, max_to_keep=stage_config.keep_checkpoints,
                                      save_interval_steps=stage_config.checkpoint_every)
    start = manager.latest_step() or 0
    if start > steps:
        manager.close()
        raise ValueError(f"[{name}] {workdir} holds a checkpoint at step {start}, beyond this "
                         f"stage's steps={steps}; use a fresh workdir or steps >= {start}.")
    make_data_iter = lambda: iter(pipeline.train_loader(
        spec.train_source, global_batch_size=batch_size, operations=spec.train_operations,
        seed=seed, worker_count=spec.worker_count))
    start, state, data_iter = _resume(manager, checkpoint.restore_target(state, state_shardings),
                                      state, steps, make_data_iter, name)
    if start == steps:
        logging.info("[%s] resumed from step %d in %s: the stage is finished", name, start,
                     workdir)
        manager.close()
        return state["params"]
    if start:
        logging.info("[%s] resumed from step %d in %s", name, start, workdir)
    first_step = start
    metadata = checkpoint.provenance(name, init_source, init_params)  # Only saves need it.

    train_step = jax.jit(
        make_train_step(spec, tx, frozen_mask, accum_steps),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,))

    # --- Loop ------------------------------------------------------------------------------------
    # The progress line (steps/s, ETA) only: with a writer clu would also write untagged
    # steps_per_sec / uptime scalars that mix the stages; the loop writes `<stage>/...` ones.
    progress = periodic_actions.ReportProgress(num_train_steps=steps,
                                               every_steps=stage_config.log_every)
    log_time, log_step = time.perf_counter(), first_step
    curve = read_eval_curve(workdir)
    for step in range(first_step + 1, steps + 1):
        batch = sharding.put_batch(mesh, next(data_iter))
        state, metrics = train_step(state, batch)
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            manager.close()
            raise NonFiniteLossError(
                f"[{name}] loss is {loss} (gradient norm {grad_norm}) at step {step}; stopped. "
                f"The last good checkpoint (step {manager.latest_step()}) in {workdir} is left "
                "intact.")
        progress(step)
        if step % stage_config.log_every == 0 or step == steps:
            now = time.perf_counter()
            steps_per_sec = (step - log_step) / (now - log_time)
            log_time, log_step = now, step
            scalars = {f"{name}/{k}": float(v) for k, v in metrics.items()}
            scalars[f"{name}/lr"] = float(lr_schedule(step - 1))
            scalars[f"{name}/steps_per_sec"] = steps_per_sec
            scalars[f"{name}/examples_per_sec"] = steps_per_sec * batch_size
            writer.write_scalars(step, scalars)
        eval_every = stage_config.get("eval_every")
        if periodic_eval and eval_every and (step % eval_every == 0 or step == steps):
            values = periodic_eval(state["params"])
            writer.write_scalars(step, {f"{name}/eval/{k}": v for k, v in values.items()})
            curve = [row for row in curve if row["step"] < step] + [dict(step=step, **values)]
            write_eval_curve(workdir, curve)
        manager.save(step, state, data_iterator=data_iter, metadata=metadata,
                     force=step == steps)
    manager.close()
    writer.flush()
    return state["params"]
