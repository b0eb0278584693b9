"""WiSE-FT: weight-space ensembles of a pretrained and a fine-tuned model."""
import jax
import jax.numpy as jnp

from wlsft_jax.optim import param_path


def interpolate(theta0, theta1, alpha):
    """Returns `(1 - alpha) * theta0 + alpha * theta1` leaf by leaf.

    alpha = 0 gives `theta0` and alpha = 1 gives `theta1` exactly, and so does every alpha where
    the two are equal (e.g. the frozen leaves of a fine-tuned model, which training leaves
    bitwise the pretrained ones: LP's encoder, WLS's encoders). `alpha` may be a traced
    scalar, so one jitted function serves a whole sweep. Each leaf keeps its dtype (the mix is
    computed in at least float32). Only floating-point leaves can be mixed: an integer or bool
    leaf (e.g. a step counter) has no meaningful midpoint and is an error, as is any difference
    in tree structure, shape or dtype; the message names the offending paths.

    Args:
      theta0: pretrained (zero-shot) parameter tree.
      theta1: fine-tuned parameter tree of the same structure, shapes and dtypes.
      alpha: mixing coefficient, usually in [0, 1].
    """
    _check_compatible(theta0, theta1)
    alpha = jnp.asarray(alpha, jnp.float32)

    def mix(leaf0, leaf1):
        dtype = jnp.result_type(leaf0)
        compute_dtype = jnp.promote_types(dtype, jnp.float32)
        mixed = (1 - alpha) * jnp.asarray(leaf0, compute_dtype) + alpha * jnp.asarray(
            leaf1, compute_dtype)
        return jnp.where(leaf0 == leaf1, leaf0, mixed.astype(dtype))

    return jax.tree.map(mix, theta0, theta1)


def _check_compatible(theta0, theta1):
    """Raises ValueError naming every path whose presence, shape or dtype differs."""
    leaves0, leaves1 = _leaves_by_path(theta0), _leaves_by_path(theta1)
    problems = [f"{path}: only in theta0" for path in leaves0 if path not in leaves1]
    problems += [f"{path}: only in theta1" for path in leaves1 if path not in leaves0]
    for path in leaves0.keys() & leaves1.keys():
        leaf0, leaf1 = leaves0[path], leaves1[path]
        if jnp.shape(leaf0) != jnp.shape(leaf1):
            problems.append(f"{path}: shape {jnp.shape(leaf0)} vs {jnp.shape(leaf1)}")
        elif jnp.result_type(leaf0) != jnp.result_type(leaf1):
            problems.append(f"{path}: dtype {jnp.result_type(leaf0)} vs "
                            f"{jnp.result_type(leaf1)}")
        elif not jnp.issubdtype(jnp.result_type(leaf0), jnp.floating):
            problems.append(f"{path}: dtype {jnp.result_type(leaf0)} is not floating point")
    if not problems and (jax.tree.structure(theta0) != jax.tree.structure(theta1)):
        problems.append(f"tree structures differ: {jax.tree.structure(theta0)} vs "
                        f"{jax.tree.structure(theta1)}")
    if problems:
        raise ValueError("Cannot interpolate these parameter trees (only floating-point "
                         "leaves of equal path, shape and dtype mix):\n  "
                         + "\n  ".join(sorted(problems)))


def _leaves_by_path(tree) -> dict:
    return {param_path(key_path): leaf
            for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
