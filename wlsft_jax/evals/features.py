"""Features of every record of a source, in record order, on any mesh and process count: what
k-NN evaluation and caption-feature caching read."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from wlsft_jax import sharding
from wlsft_jax.data import pipeline
from wlsft_jax.models import two_towers, vit

# The image features an evaluator compares, from the image tower's (features, out).
REPRESENTATIONS = {
    "cls": lambda features, out: out["encoded"][:, 0],  # Final-norm class token (DINO's k-NN).
    "features": lambda features, out: features,  # The tower's output (projected, if it is).
}


def check_representation(representation, where: str) -> None:
    """ValueError naming the valid representations for an unknown one."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"Unknown {where}.representation {representation!r}; valid choices: "
                         f"{list(REPRESENTATIONS)}.")


def image_tower(model):
    """The image tower of a stage's model (a two-tower CLIP / WLS model, or a classifier), which
    reads the `img` params."""
    if isinstance(model, two_towers.Model):
        return model.towers()[0]
    return vit.Model(**model.img)


def image_features_fn(model, representation: str):
    """Jitted (img params, images) -> the `representation` of `model`'s image tower."""
    tower, represent = image_tower(model), REPRESENTATIONS[representation]
    return jax.jit(lambda params, images: represent(*tower.apply({"params": params}, images)))


def l2_normalised(feats):
    """Rows divided by their L2 norm (a zero row stays zero), as torch's F.normalize in DINO."""
    return feats / jnp.maximum(jnp.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def reading(context) -> dict:
    """How an evaluator of `context` reads a set: eval.batch_size, on its mesh, the task's
    eval workers (the keyword arguments of `labelled_features`)."""
    return dict(batch_size=context.config.eval.batch_size, mesh=context.mesh,
                worker_count=context.task.eval_worker_count)


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
