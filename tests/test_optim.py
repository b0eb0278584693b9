"""Tests for wlsft_jax.optim: schedules, regex rules, freezing, weight-decay mask, clipping."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from wlsft_jax import optim


def _config(**overrides):
    return ml_collections.ConfigDict(dict(lr=0.1, **overrides))


def _params():
    rng = np.random.default_rng(0)
    return {
        "img": {"head": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
                "backbone": {"kernel": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}},
        "logit_scale": jnp.asarray(2.0, jnp.float32),
    }


def _state_paths(opt_state):
    return [jax.tree_util.keystr(path)
            for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]


def _train(tx, params, grads, steps):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(steps):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _one_update(config, params, grads, total_steps=10):
    tx, _ = optim.make_optimizer(config, params, total_steps)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


@pytest.mark.parametrize("decay, expected", [
    # warmup_steps=10, total_steps=110: steps 0, 5, 10 (peak), 60 (mid-decay), 110 (end).
    ("cosine", [0.0, 0.05, 0.1, 0.05, 0.0]),
    ("linear", [0.0, 0.05, 0.1, 0.05, 0.0]),
    ("constant", [0.0, 0.05, 0.1, 0.1, 0.1]),
])
def test_lr_schedule_values_at_key_steps(decay, expected):
    _, lr_schedule = optim.make_optimizer(_config(warmup_steps=10, decay=decay), _params(), 110)
    values = [float(lr_schedule(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(values, expected, atol=1e-7)


def test_cosine_without_warmup_starts_at_peak_and_ends_at_zero():
    _, lr_schedule = optim.make_optimizer(_config(), _params(), 100)
    np.testing.assert_allclose(
        [float(lr_schedule(step)) for step in (0, 25, 100)],
        [0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.0], atol=1e-7)


def test_adamw_matches_optax_adamw():
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3) * p, params)
    config = _config(wd=0.05, decay="constant", wd_mask=[])
    ours, _ = _train(optim.make_optimizer(config, params, 10)[0], params, grads, 3)
    reference, _ = _train(optax.adamw(0.1, weight_decay=0.05), params, grads, 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, reference)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_optax_sgd(nesterov):
    params = _params()
    grads = jax.tree.map(lambda p: 0.3 * p + 0.1, params)
    config = _config(optimizer="sgd", momentum=0.9, nesterov=nesterov, decay="constant")
    ours, _ = _train(optim.make_optimizer(config, params, 10)[0], params, grads, 3)
    reference, _ = _train(optax.sgd(0.1, momentum=0.9, nesterov=nesterov), params, grads, 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, reference)


def test_frozen_params_unchanged_and_carry_no_optimizer_state():
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    config = _config(wd=0.1, grad_clip_norm=1.0, mu_dtype="bfloat16",
                     schedule=[("img/head/.*", {}), (".*", None)])
    tx, _ = optim.make_optimizer(config, jax.eval_shape(lambda: params), 10)
    trained, state = _train(tx, params, grads, 4)

    for frozen in (trained["img"]["backbone"]["kernel"], trained["logit_scale"]):
        original = params["img"]["backbone"]["kernel"] if frozen.ndim else params["logit_scale"]
        np.testing.assert_array_equal(np.asarray(frozen).view(np.uint32),
                                      np.asarray(original).view(np.uint32))
    assert not np.allclose(trained["img"]["head"]["kernel"], params["img"]["head"]["kernel"])

    state_paths = _state_paths(state)
    assert not [path for path in state_paths if "backbone" in path or "logit_scale" in path]
    assert any("['head']['kernel']" in path for path in state_paths)
    # Only the head's Adam moments (mu in bf16) plus scalar step counters are stored.
    head_size = 4 * 3 + 3
    moments = {jax.tree_util.keystr(path): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0] if leaf.ndim}
    assert sum(leaf.size for leaf in moments.values()) == 2 * head_size
    assert {leaf.dtype for path, leaf in moments.items() if ".mu[" in path} == {
        jnp.dtype(jnp.bfloat16)}


def test_frozen_mask_follows_schedule():
    config = _config(schedule=[("img/head/.*", {}), (".*", None)])
    assert optim.frozen_mask(config, _params()) == {
        "img": {"head": {"kernel": False, "bias": False}, "backbone": {"kernel": True}},
        "logit_scale": True}


def test_lr_mult_scales_the_update():
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    config = _config(optimizer="sgd", momentum=0.0, decay="constant",
                     schedule=[("img/head/.*", {"lr_mult": 3.0}), (".*", {})])
    updates = _one_update(config, params, grads)
    np.testing.assert_allclose(updates["img"]["head"]["kernel"], -0.3 * np.ones((4, 3)))
    np.testing.assert_allclose(updates["img"]["backbone"]["kernel"], -0.1 * np.ones((4, 4)))


def test_default_weight_decay_mask_exempts_biases_norms_embeddings_and_temperature():
    exempt = ["img/head/bias", "img/Transformer/encoderblock_0/LayerNorm_0/scale",
              "img/Transformer/encoder_norm/scale", "txt/ln_final/scale", "img/pos_embedding",
              "txt/positional_embedding", "img/cls", "logit_scale"]
    decayed = ["img/head/kernel", "img/embedding/kernel", "txt/token_embedding/embedding",
               "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", "img/scale_proj/kernel"]
    params = {}
    for path in exempt + decayed:
        node = params
        *parents, name = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = jnp.ones((2,))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    config = _config(optimizer="sgd", momentum=0.0, wd=0.5, decay="constant")
    updates = optim.param_paths(params)
    updates = jax.tree.map(lambda path, u: (path, float(u[0])), updates,
                           _one_update(config, params, zero_grads))
    by_path = dict(jax.tree.leaves(updates, is_leaf=lambda x: isinstance(x, tuple)))
    assert {path: by_path[path] for path in exempt} == {path: 0.0 for path in exempt}
    np.testing.assert_allclose([by_path[path] for path in decayed], -0.05)

    everything_decayed = _one_update(_config(optimizer="sgd", momentum=0.0, wd=0.5,
                                             decay="constant", wd_mask=[]), params, zero_grads)
    np.testing.assert_allclose(everything_decayed["img"]["head"]["bias"], -0.05)


def test_wd_mult_scales_decay():
    params = _params()
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    config = _config(optimizer="sgd", momentum=0.0, wd=0.5, decay="constant",
                     schedule=[("img/head/.*", {"wd_mult": 0.0}), (".*", {"wd_mult": 2.0})])
    updates = _one_update(config, params, zero_grads)
    np.testing.assert_array_equal(updates["img"]["head"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["img"]["backbone"]["kernel"],
                               -0.1 * params["img"]["backbone"]["kernel"], rtol=1e-6)


def test_grad_clipping_uses_trainable_grads_only():
    params = _params()
    config = _config(optimizer="sgd", momentum=0.0, decay="constant", grad_clip_norm=1.0,
                     schedule=[("img/.*", {}), (".*", None)])
    big = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)
    updates = _one_update(config, params, big)
    trainable_norm = optax.global_norm(updates["img"])
    np.testing.assert_allclose(trainable_norm, 0.1 * 1.0, rtol=1e-5)  # lr * clip norm

    small = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    small["logit_scale"] = jnp.asarray(1e6)  # Frozen: must not shrink the trainable update.
    updates = _one_update(config, params, small)
    np.testing.assert_allclose(updates["img"]["head"]["kernel"], -0.001, rtol=1e-5)

    unclipped = _one_update(_config(optimizer="sgd", momentum=0.0, decay="constant",
                                    grad_clip_norm=None), params, big)
    np.testing.assert_allclose(unclipped["img"]["head"]["kernel"], -1.0)


def test_unmatched_params_error_lists_them_and_the_rules():
    config = _config(schedule=[("img/head/.*", {})])
    with pytest.raises(ValueError) as error:
        optim.make_optimizer(config, _params(), 10)
    message = str(error.value)
    assert "img/backbone/kernel" in message and "logit_scale" in message
    assert "img/head/kernel" not in message.split("rules:")[0]
    assert "img/head/.*" in message


@pytest.mark.parametrize("overrides, names", [
    (dict(optimizer="lamb"), ["lamb", "adamw", "sgd"]),
    (dict(decay="step"), ["step", "cosine", "constant", "linear"]),
    (dict(learning_rate=0.1), ["learning_rate", "grad_clip_norm", "warmup_steps"]),
    (dict(optimizer="sgd", b1=0.9), ["b1", "momentum", "nesterov"]),
    (dict(schedule=[(".*", {"lr_multiplier": 2.0})]), ["lr_multiplier", "lr_mult", "wd_mult"]),
    (dict(mu_dtype="int8"), ["int8", "bfloat16"]),
    (dict(schedule=[("img/(", {})]), ["img/("]),
    (dict(warmup_steps=10), ["warmup_steps=10", "total_steps=10"]),
])
def test_bad_config_errors_name_the_problem_and_valid_choices(overrides, names):
    with pytest.raises(ValueError) as error:
        optim.make_optimizer(_config(**overrides), _params(), 10)
    for name in names:
        assert name in str(error.value)


def test_param_paths_are_slash_joined_and_ignore_metadata_boxes():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(3, kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "mlp")), name="proj")(x)
            return nn.LayerNorm(name="norm")(x)

    boxed = jax.eval_shape(Tiny().init, jax.random.key(0), jnp.ones((1, 2)))["params"]
    expected = {"proj": {"kernel": "proj/kernel", "bias": "proj/bias"},
                "norm": {"scale": "norm/scale", "bias": "norm/bias"}}
    assert optim.param_paths(boxed) == expected
    assert optim.param_paths(nn.unbox(boxed)) == expected

    tx, _ = optim.make_optimizer(_config(schedule=[("proj/.*", {}), (".*", None)]), boxed, 10)
    state = tx.init(nn.unbox(Tiny().init(jax.random.key(0), jnp.ones((1, 2)))["params"]))
    assert not [path for path in _state_paths(state) if "norm" in path]
