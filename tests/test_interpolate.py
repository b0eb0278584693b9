"""Tests for wlsft_jax.interpolate (WiSE-FT)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wlsft_jax.interpolate import interpolate


def _trees():
    rng = np.random.default_rng(0)
    make = lambda: {
        "img": {"head": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=(2,)), jnp.bfloat16)}},
        "logit_scale": jnp.asarray(rng.normal(), jnp.float32),
    }
    return make(), make()


def _bits(tree):
    return jax.tree.map(lambda x: np.asarray(x).tobytes(), tree)


def test_alpha_zero_and_one_are_exact():
    theta0, theta1 = _trees()
    assert _bits(interpolate(theta0, theta1, 0.0)) == _bits(theta0)
    assert _bits(interpolate(theta0, theta1, 1.0)) == _bits(theta1)


def test_leaves_equal_in_both_stay_bitwise_at_every_alpha():
    """As a fine-tuned model's frozen leaves: (1 - a) * x + a * x is not always x in floats."""
    values = jnp.asarray(np.random.default_rng(1).normal(size=1000), jnp.float32)
    theta0, theta1 = {"frozen": values, "tuned": values}, {"frozen": values, "tuned": values + 1}
    for alpha in (0.1, 0.3, 0.7):
        mixed = interpolate(theta0, theta1, alpha)
        assert _bits(mixed["frozen"]) == _bits(values), alpha
        np.testing.assert_allclose(mixed["tuned"], values + alpha, rtol=1e-5, atol=1e-6)
    plain = (1 - 0.3) * values + 0.3 * values  # What the mix would be without the rule.
    assert _bits(plain) != _bits(values)


def test_half_is_the_midpoint_and_dtypes_are_kept():
    theta0, theta1 = _trees()
    mixed = interpolate(theta0, theta1, 0.5)
    for leaf, leaf0, leaf1 in zip(*map(jax.tree.leaves, (mixed, theta0, theta1))):
        assert leaf.dtype == leaf0.dtype
        expected = (np.asarray(leaf0, np.float32) + np.asarray(leaf1, np.float32)) / 2
        np.testing.assert_allclose(np.asarray(leaf, np.float32), expected,
                                   rtol=1e-2 if leaf.dtype == jnp.bfloat16 else 1e-6)


def test_traced_alpha_under_jit_compiles_once_for_a_sweep():
    theta0, theta1 = _trees()
    traces = []

    @jax.jit
    def mix(alpha):
        traces.append(alpha)
        return interpolate(theta0, theta1, alpha)

    for alpha in (0.0, 0.25, 1.0):
        kernel = mix(jnp.float32(alpha))["img"]["head"]["kernel"]
        np.testing.assert_allclose(
            kernel, (1 - alpha) * theta0["img"]["head"]["kernel"]
            + alpha * theta1["img"]["head"]["kernel"], rtol=1e-6)
    assert len(traces) == 1


def test_missing_and_extra_paths_are_named():
    theta0, theta1 = _trees()
    del theta1["img"]["head"]["bias"]
    theta1["txt"] = {"kernel": jnp.ones((2,))}
    with pytest.raises(ValueError) as error:
        interpolate(theta0, theta1, 0.5)
    assert "img/head/bias: only in theta0" in str(error.value)
    assert "txt/kernel: only in theta1" in str(error.value)


def test_shape_and_dtype_mismatches_are_named():
    theta0, theta1 = _trees()
    theta1["img"]["head"]["kernel"] = jnp.ones((2, 3))
    theta1["logit_scale"] = theta1["logit_scale"].astype(jnp.bfloat16)
    with pytest.raises(ValueError) as error:
        interpolate(theta0, theta1, 0.5)
    assert "img/head/kernel: shape (3, 2) vs (2, 3)" in str(error.value)
    assert "logit_scale: dtype float32 vs bfloat16" in str(error.value)


def test_integer_leaves_are_rejected():
    theta0, theta1 = _trees()
    theta0["step"] = theta1["step"] = jnp.asarray(3, jnp.int32)
    with pytest.raises(ValueError, match="step: dtype int32 is not floating point"):
        interpolate(theta0, theta1, 0.5)
