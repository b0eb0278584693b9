"""Optax optimizers built from an `ml_collections.ConfigDict`.

One config describes the whole update rule:

    optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", lr=1e-5, wd=0.1, warmup_steps=500, decay="cosine",
        grad_clip_norm=1.0,
        schedule=[("img/head/.*", {"lr_mult": 10.0}), ("img/.*", {}), (".*", None)],
    ))
    tx, lr_schedule = make_optimizer(optim, params, total_steps)

`schedule` is a big_vision-style regex schedule over parameter paths ("/"-joined dict keys,
e.g. "img/encoderblock_0/attn/query/kernel"): the first rule whose regex fully matches a path
applies. Its settings may scale the learning rate (`lr_mult`) and the weight decay (`wd_mult`);
`None` freezes the parameter, which then gets a zero update and carries no optimizer state.

Config keys (defaults in `_DEFAULTS`; any other key is an error):
  optimizer       "adamw" | "sgd"                                   ("adamw")
  lr              peak learning rate                                (required)
  wd              weight decay, multiplied by the lr as in optax    (0.0)
  b1, b2, eps     Adam moments (adamw only)                         (0.9, 0.999, 1e-8)
  momentum        SGD momentum, 0 = plain SGD (sgd only)            (0.9)
  nesterov        Nesterov momentum (sgd only)                      (False)
  grad_clip_norm  clip trainable grads to this global norm; None/0 off  (None)
  warmup_steps    linear warmup from 0 to lr                        (0)
  decay           "cosine" | "linear" (to 0 at total_steps) | "constant"  ("cosine")
  schedule        [(regex, {"lr_mult": .., "wd_mult": ..} | None), ...]   ([(".*", {})])
  wd_mask         regexes of parameters exempt from weight decay    (DEFAULT_NO_DECAY)
  mu_dtype        dtype of the first moment / momentum, e.g. "bfloat16"   (None: as params)
"""
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

OPTIMIZERS = ("adamw", "sgd")
DECAYS = ("cosine", "constant", "linear")
RULE_SETTINGS = ("lr_mult", "wd_mult")
MU_DTYPES = ("bfloat16", "float16", "float32")

# Parameters that get no weight decay by default: biases, normalisation scales, position
# embeddings, class tokens and the CLIP temperature. Regexes fully match "/"-joined paths.
DEFAULT_NO_DECAY = (
    r"(.*/)?bias",
    r"(?i)(.*/)?[^/]*(norm|ln)[^/]*/scale",
    r"(?i)(.*/)?[^/]*pos[^/]*emb[^/]*",
    r"(.*/)?(cls|cls_token|class_embedding)",
    r"(.*/)?logit_(scale|bias)",
)

_COMMON_KEYS = ("optimizer", "lr", "wd", "grad_clip_norm", "warmup_steps", "decay",
                "schedule", "wd_mask", "mu_dtype")
_OPTIMIZER_KEYS = {"adamw": ("b1", "b2", "eps"), "sgd": ("momentum", "nesterov")}
_DEFAULTS = dict(optimizer="adamw", wd=0.0, grad_clip_norm=None, warmup_steps=0,
                 decay="cosine", schedule=((".*", {}),), wd_mask=DEFAULT_NO_DECAY,
                 mu_dtype=None, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False)
_FROZEN = "frozen"


def param_path(key_path) -> str:
    """"/"-joined name of a `jax.tree_util` key path, e.g. "img/head/kernel"."""

    def name(key):
        if isinstance(key, jax.tree_util.GetAttrKey):
            return key.name
        if isinstance(key, jax.tree_util.SequenceKey):
            return str(key.idx)
        return str(key.key)  # DictKey, FlattenedIndexKey

    return "/".join(name(key) for key in key_path)


def param_paths(tree):
    """Tree of the same structure holding each leaf's "/"-joined path.

    Flax metadata boxes (e.g. `nn.LogicallyPartitioned` from `jax.eval_shape(model.init, ...)`)
    count as leaves, so boxed and unboxed trees give the same paths.
    """
    return jax.tree_util.tree_map_with_path(
        lambda key_path, _: param_path(key_path), tree,
        is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def make_optimizer(config, params, total_steps: int):
    """Builds `(tx, lr_schedule)` from an optimizer config.

    Args:
      config: `ConfigDict` (or mapping) with the keys listed in the module docstring.
      params: the parameter tree, concrete or from `jax.eval_shape`; only its paths are used.
      total_steps: length of the run in optimizer steps (the end of the lr decay).

    Returns:
      tx: an `optax.GradientTransformation` for the unboxed parameter tree.
      lr_schedule: `step -> base learning rate` (before any rule's `lr_mult`), for logging.
    """
    config = _read_config(config)
    rules = _compile_rules(config["schedule"])
    group_of_rule = _group_names(rules)
    labels = _labeller(rules, group_of_rule)
    used_groups = set(jax.tree.leaves(labels(params)))  # Raises listing unmatched params.

    lr_schedule = _lr_schedule(config, total_steps)
    is_decayed = _decay_mask(config["wd_mask"])
    groups = {_FROZEN: optax.set_to_zero()}
    for index, (_, settings) in enumerate(rules):
        if group_of_rule[index] in used_groups and settings is not None:
            groups[group_of_rule[index]] = _trainable_group(config, settings, lr_schedule,
                                                            is_decayed)
    tx = optax.multi_transform({name: groups[name] for name in used_groups}, labels)

    if config["grad_clip_norm"]:
        # Clip by the norm of the trainable gradients only: frozen ones never reach a parameter.
        is_trainable = lambda tree: jax.tree.map(lambda label: label != _FROZEN, labels(tree))
        tx = optax.chain(optax.masked(optax.clip_by_global_norm(config["grad_clip_norm"]),
                                      is_trainable), tx)
    return tx, lr_schedule


def frozen_mask(config, params):
    """Tree of bools, True where the config's `schedule` freezes the parameter.

    Lets a training step skip gradients it would throw away (`jax.lax.stop_gradient`).
    """
    config = _read_config(config)
    rules = _compile_rules(config["schedule"])
    return jax.tree.map(lambda label: label == _FROZEN,
                        _labeller(rules, _group_names(rules))(params))


def _read_config(config) -> dict[str, Any]:
    """Config as a plain dict with defaults filled in; unknown keys and names are errors."""
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    optimizer = config.get("optimizer", _DEFAULTS["optimizer"])
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; valid optimizers: {OPTIMIZERS}.")
    valid_keys = _COMMON_KEYS + _OPTIMIZER_KEYS[optimizer]
    unknown = sorted(set(config) - set(valid_keys))
    if unknown:
        raise ValueError(f"Unknown optim config keys {unknown} for optimizer {optimizer!r}; "
                         f"valid keys: {sorted(valid_keys)}.")
    if "lr" not in config:
        raise ValueError(f"The optim config needs `lr`; valid keys: {sorted(valid_keys)}.")
    config = {key: config.get(key, _DEFAULTS.get(key)) for key in valid_keys}
    if config["decay"] not in DECAYS:
        raise ValueError(f"Unknown decay {config['decay']!r}; valid decays: {DECAYS}.")
    if config["mu_dtype"] is not None and config["mu_dtype"] not in MU_DTYPES:
        raise ValueError(f"Unknown mu_dtype {config['mu_dtype']!r}; "
                         f"valid: {MU_DTYPES} or None.")
    return config


def _compile_rules(schedule) -> list[tuple[re.Pattern, dict | None]]:
    """Validates `(regex, settings | None)` pairs and compiles their regexes."""
    rules = []
    for index, rule in enumerate(schedule):
        if not (isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
                and isinstance(rule[0], str)):
            raise ValueError(f"schedule rule {index} is {rule!r}; each rule must be a "
                             "(regex, settings dict | None) pair.")
        pattern, settings = rule
        regex = _compile(pattern, f"schedule rule {index}")
        if settings is not None:
            settings = dict(settings.to_dict() if hasattr(settings, "to_dict") else settings)
            unknown = sorted(set(settings) - set(RULE_SETTINGS))
            if unknown:
                raise ValueError(f"schedule rule {index} ({pattern!r}) has unknown settings "
                                 f"{unknown}; valid settings: {RULE_SETTINGS}.")
        rules.append((regex, settings))
    return rules


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{where}: invalid regex {pattern!r}: {error}.") from None


def _group_names(rules) -> dict[int, str]:
    """Optimizer-state group name of each rule (frozen rules share one stateless group)."""
    return {index: _FROZEN if settings is None else f"group_{index}"
            for index, (_, settings) in enumerate(rules)}


def _labeller(rules, group_of_rule) -> Callable[[Any], Any]:
    """`params -> tree of group names`; raises listing the paths that no rule matches."""

    def first_match(path):
        for index, (regex, _) in enumerate(rules):
            if regex.fullmatch(path):
                return group_of_rule[index]
        return None

    def labels(params):
        paths, treedef = jax.tree.flatten(param_paths(params))
        label_list = [first_match(path) for path in paths]
        unmatched = [path for path, label in zip(paths, label_list) if label is None]
        if unmatched:
            shown = "\n  ".join(unmatched[:20])
            more = f"\n  ... and {len(unmatched) - 20} more" if len(unmatched) > 20 else ""
            raise ValueError(
                f"{len(unmatched)} parameters match no schedule rule:\n  {shown}{more}\n"
                f"rules: {[regex.pattern for regex, _ in rules]}. Every parameter must match "
                "a rule; add a catch-all such as ('.*', None) to freeze the rest.")
        return treedef.unflatten(label_list)

    return labels


def _decay_mask(no_decay_patterns) -> Callable[[Any], Any]:
    """`params -> tree of bools`, True where weight decay applies."""
    regexes = [_compile(pattern, "wd_mask") for pattern in no_decay_patterns]
    return lambda params: jax.tree.map(
        lambda path: not any(regex.fullmatch(path) for regex in regexes), param_paths(params))


def _lr_schedule(config, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine / linear decay to 0 at `total_steps`, or flat."""
    lr, warmup_steps = config["lr"], config["warmup_steps"]
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"Need 0 <= warmup_steps < total_steps; got warmup_steps="
                         f"{warmup_steps}, total_steps={total_steps}.")
    decay_steps = total_steps - warmup_steps
    after_warmup = {
        "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps),
        "linear": lambda: optax.linear_schedule(lr, 0.0, decay_steps),
        "constant": lambda: optax.constant_schedule(lr),
    }[config["decay"]]()
    if warmup_steps == 0:
        return after_warmup
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), after_warmup], [warmup_steps])


def _trainable_group(config, settings, lr_schedule, is_decayed) -> optax.GradientTransformation:
    """Update rule for the parameters of one schedule rule.

    AdamW decays decoupled from the moments (as `optax.adamw`); SGD adds the decay to the
    gradient before momentum (L2, as `torch.optim.SGD`). Both scale the decay by the lr.
    """
    lr_mult = settings.get("lr_mult", 1.0)
    weight_decay = config["wd"] * settings.get("wd_mult", 1.0)
    decay = optax.add_decayed_weights(weight_decay, is_decayed) if weight_decay else None
    scale_lr = optax.scale_by_learning_rate(lambda step: lr_mult * lr_schedule(step))
    mu_dtype = None if config["mu_dtype"] is None else jnp.dtype(config["mu_dtype"])
    if config["optimizer"] == "adamw":
        moments = optax.scale_by_adam(config["b1"], config["b2"], config["eps"],
                                      mu_dtype=mu_dtype)
        steps = [moments, decay, scale_lr]
    else:
        momentum = (optax.trace(config["momentum"], config["nesterov"], mu_dtype)
                    if config["momentum"] else None)
        steps = [decay, momentum, scale_lr]
    return optax.chain(*(step for step in steps if step is not None))
