"""Input checks shared by the evaluators that work on frozen features (k-NN, linear probe).

Each check converts its input to a jax array once (so the evaluator does not copy it again) and
raises `ValueError` naming the argument, the problem and what would be valid.
"""
import jax
import jax.numpy as jnp


def checked_features(name: str, feats, *, dim: int | None = None) -> jax.Array:
    """Returns `feats` as float32[N, D], checked 2-D, non-empty, finite (and D == dim if given)."""
    feats = jnp.asarray(feats, jnp.float32)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_examples, dim]; got shape {feats.shape}.")
    if feats.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {feats.shape}); it needs at least one row.")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(
            f"{name} has {feats.shape[1]} features per row but the training features have {dim}; "
            f"both must have the same dimension.")
    if not bool(jnp.isfinite(feats).all()):
        raise ValueError(f"{name} contains NaN or infinite values; features must be finite.")
    return feats


def checked_labels(name: str, labels, *, num_rows: int, num_classes: int) -> jax.Array:
    """Returns `labels` as int32[num_rows] after checking they are integers in [0, num_classes)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes}.")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class ids; got dtype {labels.dtype}.")
    if labels.shape != (num_rows,):
        raise ValueError(
            f"{name} must have shape ({num_rows},), one label per feature row; got {labels.shape}.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} contains label {bad}; valid labels are 0..{num_classes - 1} "
            f"(num_classes={num_classes}).")
    return labels.astype(jnp.int32)
