"""Tests for wlsft_jax.objectives against NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wlsft_jax import objectives


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _reference_clip_loss(zimg, ztxt, temperature):
    logits = temperature * zimg.astype(np.float64) @ ztxt.astype(np.float64).T
    diagonal = np.arange(len(zimg))
    loss_i2t = -_log_softmax(logits)[diagonal, diagonal].mean()
    loss_t2i = -_log_softmax(logits.T)[diagonal, diagonal].mean()
    return (loss_i2t + loss_t2i) / 2, loss_i2t, loss_t2i


def _embeddings(batch_size=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    zimg, ztxt = rng.normal(size=(2, batch_size, dim)).astype(np.float32)
    ztxt = zimg + 0.8 * ztxt  # Correlated pairs, so accuracies are between 0 and 1.
    normalise = lambda z: z / np.linalg.norm(z, axis=-1, keepdims=True)
    return normalise(zimg), normalise(ztxt)


def test_softmax_xent_matches_numpy_and_reports_correct():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    labels[:3] = logits[:3].argmax(-1)  # The first three are right.
    labels[3:] = (logits[3:].argmax(-1) + 1) % 5  # The last three are wrong.
    loss, correct = objectives.softmax_xent(jnp.asarray(logits), jnp.asarray(labels))
    expected = -_log_softmax(logits.astype(np.float64))[np.arange(6), labels].mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_array_equal(correct, [True] * 3 + [False] * 3)


def test_softmax_xent_mask_ignores_padded_rows():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = logits.argmax(-1)
    mask = np.array([True, True, False, True, False, False])
    loss, correct = objectives.softmax_xent(jnp.asarray(logits), labels, jnp.asarray(mask))
    expected = -_log_softmax(logits.astype(np.float64))[mask.nonzero()[0], labels[mask]].mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_array_equal(correct, mask)

    garbage = logits.copy()
    garbage[~mask] = 1e4
    loss_with_garbage, _ = objectives.softmax_xent(jnp.asarray(garbage), labels, mask)
    np.testing.assert_allclose(loss_with_garbage, loss, rtol=1e-6)
    all_masked, _ = objectives.softmax_xent(jnp.asarray(logits), labels, np.zeros(6, bool))
    assert float(all_masked) == 0.0


def test_clip_contrastive_matches_numpy_reference():
    zimg, ztxt = _embeddings()
    loss, metrics = objectives.clip_contrastive(jnp.asarray(zimg), jnp.asarray(ztxt), 10.0)
    expected, expected_i2t, expected_t2i = _reference_clip_loss(zimg, ztxt, 10.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_i2t"], expected_i2t, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_t2i"], expected_t2i, rtol=1e-5)
    similarity = zimg @ ztxt.T
    np.testing.assert_allclose(metrics["in_batch_retrieval_i2t"],
                               np.mean(similarity.argmax(1) == np.arange(8)))
    np.testing.assert_allclose(metrics["in_batch_retrieval_t2i"],
                               np.mean(similarity.argmax(0) == np.arange(8)))


def test_clip_contrastive_is_symmetric_in_the_towers():
    zimg, ztxt = _embeddings(seed=2)
    loss, metrics = objectives.clip_contrastive(zimg, ztxt, 5.0)
    swapped_loss, swapped = objectives.clip_contrastive(ztxt, zimg, 5.0)
    np.testing.assert_allclose(swapped_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(swapped["loss_i2t"], metrics["loss_t2i"], rtol=1e-6)
    np.testing.assert_allclose(swapped["in_batch_retrieval_t2i"], metrics["in_batch_retrieval_i2t"])


def test_clip_contrastive_perfect_pairs_have_full_accuracy():
    eye = jnp.eye(4)
    loss, metrics = objectives.clip_contrastive(eye, eye, 100.0)
    assert float(metrics["in_batch_retrieval_i2t"]) == float(metrics["in_batch_retrieval_t2i"]) == 1.0
    assert float(loss) < 1e-6


def test_clip_contrastive_mask_equals_loss_on_valid_rows_with_finite_grads():
    zimg, ztxt = _embeddings(seed=3)
    mask = np.array([True, False, True, True, False, True, True, False])
    loss, metrics = objectives.clip_contrastive(zimg, ztxt, 10.0, jnp.asarray(mask))
    expected, _, _ = _reference_clip_loss(zimg[mask], ztxt[mask], 10.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    _, valid_metrics = objectives.clip_contrastive(zimg[mask], ztxt[mask], 10.0)
    np.testing.assert_allclose(metrics["in_batch_retrieval_i2t"], valid_metrics["in_batch_retrieval_i2t"])

    grads = jax.grad(lambda a, b: objectives.clip_contrastive(a, b, 10.0, mask)[0],
                     argnums=(0, 1))(jnp.asarray(zimg), jnp.asarray(ztxt))
    for grad in grads:
        assert np.isfinite(grad).all()
        np.testing.assert_array_equal(grad[~mask], 0.0)


def test_clip_contrastive_batch_sharded_under_jit_matches_unsharded():
    devices = np.array(jax.devices())
    if len(devices) < 2:
        pytest.skip("needs several devices (tests/conftest.py provides 8 CPU devices)")
    zimg, ztxt = _embeddings(batch_size=2 * len(devices))
    mesh = Mesh(devices, ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data", None))
    sharded = [jax.device_put(z, batch_sharding) for z in (zimg, ztxt)]
    loss, metrics = jax.jit(objectives.clip_contrastive)(*sharded, jnp.float32(10.0))
    expected, _ = objectives.clip_contrastive(zimg, ztxt, 10.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["in_batch_retrieval_i2t"],
                               objectives.clip_contrastive(zimg, ztxt, 10.0)[1]["in_batch_retrieval_i2t"])


def test_bf16_inputs_give_float32_loss():
    zimg, ztxt = _embeddings()
    loss, _ = objectives.clip_contrastive(jnp.asarray(zimg, jnp.bfloat16),
                                          jnp.asarray(ztxt, jnp.bfloat16), 10.0)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, _reference_clip_loss(zimg, ztxt, 10.0)[0], rtol=2e-2)
