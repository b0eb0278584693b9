"""grain input pipelines: an endless shuffled training stream and a finite, padded eval pass.

Both split the data between JAX processes (`shard_index` of `shard_count`, by default this
process of all processes) and yield this process's part of each global batch, as numpy dicts
ready for `jax.make_array_from_process_local_data`.
"""
import math
import os
import threading
import time
from typing import Any, Sequence

import grain.python as grain
import jax
import numpy as np

MASK_KEY = "mask"


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """(shard_index, shard_count), defaulting to this JAX process among all processes."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must lie in 0..shard_count-1 with "
                         f"shard_count={shard_count} >= 1.")
    return shard_index, shard_count


def _local_batch_size(global_batch_size: int, shard_count: int) -> int:
    """The per-process batch size; the global one must split evenly between processes."""
    if global_batch_size < 1 or global_batch_size % shard_count:
        raise ValueError(f"Global batch size {global_batch_size} must be a positive multiple of "
                         f"the number of processes ({shard_count}); valid sizes: "
                         f"{[shard_count * k for k in (1, 2, 4, 8)]}, ...")
    return global_batch_size // shard_count


class ExitWithParent(grain.MapTransform):
    """The identity on batches that, inside a grain worker process, starts a daemon thread that
    ends the worker once the process that built the loader is gone (also after a SIGKILL, where
    no cleanup runs); without it the workers outlive a killed run."""

    def __init__(self):
        self._owner = os.getpid()
        self._watching = False

    def map(self, batch):
        if not self._watching and os.getpid() != self._owner:
            self._watching = True
            threading.Thread(target=self._exit_when_orphaned, daemon=True).start()
        return batch

    def _exit_when_orphaned(self):
        while os.getppid() == self._owner:
            time.sleep(1.0)
        os._exit(0)


def train_loader(source: grain.RandomAccessDataSource, *, global_batch_size: int,
                 operations: Sequence[grain.Transformation], seed: int, worker_count: int = 0,
                 shard_index: int | None = None,
                 shard_count: int | None = None) -> grain.DataLoader:
    """Shuffled, endlessly repeated batches of `source` after `operations`.

    All processes walk one global shuffled stream: process i reads stream positions i, i + n,
    i + 2n, ... (n = shard_count) and yields batches of global_batch_size // n, so each record
    is read by one process only. With worker_count=0 the global batches hold the same records,
    with the same random augmentations, on any number of processes (only the row order within
    a batch differs), so results do not depend on the topology. Iterate with
    `it = iter(loader)`; `it.get_state()` / `it.set_state(state)` save and resume the stream.
    Random operations draw from per-record generators seeded by `seed` and the record's
    position in the stream, so a given (seed, worker_count) always yields the same batches
    (worker processes interleave whole batches, so the order depends on worker_count).
    """
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    local_batch_size = _local_batch_size(global_batch_size, shard_count)
    if len(source) < shard_count:
        raise ValueError(f"The source has {len(source)} records, fewer than the {shard_count} "
                         f"processes that share it; each process needs at least one record.")
    shard_options = grain.ShardOptions(shard_index=shard_index, shard_count=shard_count)
    # The sampler shuffles all records (and seeds each position's rng); the loader's
    # shard_options pick this process's positions of that stream.
    sampler = grain.IndexSampler(num_records=len(source), shard_options=grain.NoSharding(),
                                 shuffle=True, num_epochs=None, seed=seed)
    return grain.DataLoader(
        data_source=source, sampler=sampler, shard_options=shard_options,
        operations=[*operations, grain.Batch(local_batch_size, drop_remainder=True),
                    ExitWithParent()],
        worker_count=worker_count)


class EvalShard(grain.RandomAccessDataSource):
    """One process's contiguous part of `source`, padded with masked copies of a real record.

    Every shard holds `padded_length` records: the first ones are the shard's records with
    mask=True, the rest repeat one record with mask=False so that shapes stay valid.
    """

    def __init__(self, source: grain.RandomAccessDataSource, *, shard_index: int,
                 shard_count: int, padded_length: int):
        records_per_shard = math.ceil(len(source) / shard_count)
        self._source = source
        self._start = min(len(source), shard_index * records_per_shard)
        self._stop = min(len(source), self._start + records_per_shard)
        self._padded_length = padded_length
        self._shard = (shard_index, shard_count)

    def __len__(self) -> int:
        return self._padded_length

    def __getitem__(self, index: int) -> dict[str, Any]:
        is_real = index < self._stop - self._start
        record = self._source[self._start + index if is_real else 0]
        if not isinstance(record, dict):
            raise ValueError(f"Eval records must be dicts (a '{MASK_KEY}' key is added), got "
                             f"{type(record).__name__}.")
        return {**record, MASK_KEY: np.bool_(is_real)}

    def __repr__(self) -> str:
        return (f"EvalShard(source={self._source!r}, shard={self._shard}, "
                f"padded_length={self._padded_length})")


def eval_batches(source: grain.RandomAccessDataSource, *, batch_size: int,
                 operations: Sequence[grain.Transformation], seed: int = 0,
                 worker_count: int = 0, shard_index: int | None = None,
                 shard_count: int | None = None) -> grain.DataLoader:
    """One ordered pass over `source` in batches with a bool `mask` (False on padding rows).

    `batch_size` is global: each process gets a contiguous 1/shard_count of the records and
    yields batches of batch_size // shard_count. All processes yield the same number of batches
    (as jitted multi-process steps require), so the last ones are padded; summing over rows
    where mask is True counts every record exactly once. `seed` feeds random operations only.
    """
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    local_batch_size = _local_batch_size(batch_size, shard_count)
    if len(source) == 0:
        raise ValueError("eval_batches needs a non-empty source.")
    records_per_shard = math.ceil(len(source) / shard_count)
    padded_length = math.ceil(records_per_shard / local_batch_size) * local_batch_size
    shard = EvalShard(source, shard_index=shard_index, shard_count=shard_count,
                      padded_length=padded_length)
    sampler = grain.IndexSampler(num_records=len(shard), shard_options=grain.NoSharding(),
                                 shuffle=False, num_epochs=1, seed=seed)
    return grain.DataLoader(
        data_source=shard, sampler=sampler, shard_options=grain.NoSharding(),
        operations=[*operations, grain.Batch(local_batch_size, drop_remainder=False),
                    ExitWithParent()],
        worker_count=worker_count)
