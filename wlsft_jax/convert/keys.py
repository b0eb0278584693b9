"""Checkpoint key validation shared by the converters: every problem reported in one error."""
from collections.abc import Mapping

import flax.linen as nn
import jax


def check_keys(expected: Mapping[str, tuple], found: Mapping[str, tuple], *, source: str) -> None:
    """Raises ValueError listing missing, unexpected and mis-shaped keys of a checkpoint.

    `expected` and `found` map checkpoint key -> shape; `source` names the checkpoint.
    """
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = [f"{key}: model needs {tuple(expected[key])}, checkpoint has {tuple(found[key])}"
                 for key in sorted(expected.keys() & found.keys())
                 if tuple(expected[key]) != tuple(found[key])]
    problems = []
    for title, lines in (("missing", missing), ("unexpected", unexpected),
                         ("mis-shaped", misshaped)):
        if lines:
            problems.append(f"{len(lines)} {title} key(s):\n  " + "\n  ".join(lines))
    if problems:
        raise ValueError(f"Checkpoint {source} does not match the model.\n" + "\n".join(problems))


def abstract_params(model: nn.Module, *inputs) -> dict:
    """Param shapes of `model` on `inputs`, as ShapeDtypeStructs (no compute, no memory)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))
    return nn.unbox(variables["params"])
