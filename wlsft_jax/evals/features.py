"""Features of every record of a source, in record order, on any mesh and process count: what
k-NN evaluation and caption-feature caching read."""
from __future__ import annotations

import numpy as np
from jax.experimental import multihost_utils

from wlsft_jax import sharding
from wlsft_jax.data import pipeline


def features(features_fn, params, source, *, operations, input_key="image", batch_size, mesh,
             worker_count) -> dict[str, np.ndarray]:
    """Every record of `source` after `operations` (which keep `input_key`, the mask and any key
    wanted back), in record order, whole on every process: {"features": features_fn(params,
    the batch's inputs), and each other key the operations keep}.

    Each process reads a contiguous share of the records (`pipeline.eval_batches`); every batch's
    rows of each share are gathered from its process, so the order does not depend on how the
    mesh lays the batch out (nor does k-NN's tie-breaking, by bank row, on the topology).
    """
    batch_spec = sharding.batch_sharding(mesh).spec
    gathered = []
    for batch in pipeline.eval_batches(source, batch_size=batch_size, operations=operations,
                                       worker_count=worker_count):
        inputs = sharding.put_batch(mesh, {input_key: batch.pop(input_key)})[input_key]
        out = multihost_utils.global_array_to_host_local_array(
            features_fn(params, inputs), mesh, batch_spec)
        gathered.append(multihost_utils.process_allgather(dict(batch, features=np.asarray(out))))
    # [processes, batches, rows, ...] -> rows of process 0's share, then process 1's, ...
    rows = {key: np.stack([batch[key] for batch in gathered], axis=1) for key in gathered[0]}
    rows = {key: value.reshape(-1, *value.shape[3:]) for key, value in rows.items()}
    real = rows.pop(pipeline.MASK_KEY)
    return {key: value[real] for key, value in rows.items()}


def labelled_features(features_fn, params, eval_set, *, batch_size, mesh, worker_count):
    """(features float32[N, D], labels int[N]) of every record of `eval_set`."""
    out = features(features_fn, params, eval_set.source, operations=eval_set.operations,
                   batch_size=batch_size, mesh=mesh, worker_count=worker_count)
    return out["features"], out["label"]
