"""ViT, text tower and two-tower model: shapes, pooling, resampling, dtypes, axes, errors,
and the memory levers (scan, remat)."""
import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wlsft_jax import sharding
from wlsft_jax.models import overview, text, two_towers, vit, vit_params
from helpers import images, random_params

LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "vocab", "joint", "classes", None}
TINY_IMAGE = dict(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=4,
                  image_size=16)
TINY_TEXT = dict(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, vocab_size=50,
                 context_length=8)


def init(model, *inputs):
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), *inputs)["params"])


def tokens(n=2, length=8, vocab=50, seed=0):
    return jax.random.randint(jax.random.key(seed), (n, length), 0, vocab, jnp.int32)


@pytest.mark.parametrize("variant,expected", [
    ("mu/4", dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=4)),
    ("B/16", dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)),
    ("L/14", dict(width=1024, depth=24, mlp_dim=4096, num_heads=16, patch_size=14)),
])
def test_variant_names_give_sizes(variant, expected):
    assert vit.Model(variant=variant).sizes() == expected
    assert vit.Model(variant=variant, depth=2).sizes()["depth"] == 2


def test_default_is_the_tiny_tower_with_the_grid_of_the_init_images():
    abstract = jax.eval_shape(vit.Model().init, jax.random.key(0), images(size=32))["params"]
    assert nn.unbox(abstract)["pos_embedding"].shape == (1, 64, 128)
    assert len([k for k in abstract if k.startswith("encoderblock_")]) == 4


def test_unknown_variant_lists_choices():
    with pytest.raises(ValueError, match=r"'Q/16'.*'B'.*'mu'"):
        vit.parse_variant("Q/16")
    with pytest.raises(ValueError, match="NAME/PATCH"):
        vit.parse_variant("B")


@pytest.mark.parametrize("pool", ["cls", "mean", "map"])
def test_vit_exposes_intermediates(pool):
    model = vit.Model(**TINY_IMAGE, pool=pool, proj_dim=24, num_classes=5)
    params = random_params(model, images())
    features, out = model.apply({"params": params}, images())
    assert features.shape == (2, 24) and features.dtype == jnp.float32
    assert out["stem"].shape == (2, 16, 32)
    assert [k for k in out if k.startswith("block")] == ["block0", "block1"]
    assert out["block1"].shape == out["encoded"].shape == (2, 17, 32)
    assert out["pooled"].shape == (2, 32)
    np.testing.assert_array_equal(out["pre_logits"], features)
    assert out["logits"].shape == (2, 5)
    if pool == "cls":
        np.testing.assert_array_equal(out["pooled"], out["encoded"][:, 0])
    if pool == "mean":
        np.testing.assert_allclose(out["pooled"], out["encoded"][:, 1:].mean(1), atol=1e-6)


def test_other_image_size_resamples_position_embedding(caplog):
    caplog.set_level(logging.INFO, logger="absl")  # absl may sit at WARNING after main ran.
    model = vit.Model(**TINY_IMAGE)
    params = random_params(model, images())
    features, out = model.apply({"params": params}, images(size=24))
    assert out["stem"].shape == (2, 36, 32) and np.isfinite(features).all()
    assert "resampling position embedding from 4x4 to 6x6" in caplog.text


def test_resample_posemb_keeps_a_linear_ramp_and_identity():
    ramp = jnp.arange(4.0)[:, None] + 10 * jnp.arange(4.0)[None, :]  # [4, 4]
    posemb = ramp.reshape(1, 16, 1)
    np.testing.assert_array_equal(vit.resample_posemb(posemb, (4, 4)), posemb)
    resized = vit.resample_posemb(posemb, (8, 8)).reshape(8, 8)
    # Bilinear resize of a ramp stays monotonic in both directions with the same corners order.
    assert (np.diff(resized, axis=0) >= 0).all() and (np.diff(resized, axis=1) >= 0).all()
    np.testing.assert_allclose(resized.mean(), ramp.mean(), atol=1e-5)


def test_resample_patch_kernel_preserves_embedding_of_resized_patches():
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 3, 5))
    new_kernel = vit_params.resample_patch_kernel(kernel, 8)
    patch = jax.random.normal(jax.random.key(2), (4, 4, 3))
    resized = jax.image.resize(patch, (8, 8, 3), "bilinear")
    np.testing.assert_allclose(jnp.einsum("hwc,hwcd->d", resized, new_kernel),
                               jnp.einsum("hwc,hwcd->d", patch, kernel), atol=1e-3)


def test_text_tower_pools_at_end_of_text():
    eot = 49
    model = text.Model(**TINY_TEXT, eot_id=eot)
    ids = np.array([[3, 4, eot, 0, 0, 0, 0, 0], [5, 6, 7, 8, eot, 0, 0, 0]], np.int32)
    params = random_params(model, ids)
    features, out = model.apply({"params": params}, ids)
    np.testing.assert_array_equal(out["pooled"][0], out["encoded"][0, 2])
    np.testing.assert_array_equal(out["pooled"][1], out["encoded"][1, 4])
    # Causal: tokens after the end-of-text token do not change the features.
    changed = ids.copy()
    changed[:, -1] = 7
    np.testing.assert_allclose(model.apply({"params": params}, changed)[0], features, atol=1e-6)
    # Without eot_id the argmax of the ids (CLIP's largest id) is the same position here.
    argmax_model = text.Model(**TINY_TEXT)
    np.testing.assert_array_equal(argmax_model.apply({"params": params}, ids)[0], features)


def test_two_towers_normalised_outputs_and_temperature():
    model = two_towers.Model(image=TINY_IMAGE, text=TINY_TEXT, out_dim=16)
    params = init(model, images(), tokens())
    zimg, ztxt, out = model.apply({"params": params}, images(), tokens())
    assert zimg.shape == ztxt.shape == (2, 16)
    np.testing.assert_allclose(jnp.linalg.norm(zimg, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(params["logit_scale"], math.log(1 / 0.07), rtol=1e-6)
    np.testing.assert_allclose(out["temperature"], 1 / 0.07, rtol=1e-5)
    assert {"img/encoded", "txt/encoded"} <= set(out)
    zimg_only, none, _ = model.apply({"params": params}, images(), None)
    assert none is None
    np.testing.assert_array_equal(zimg_only, zimg)
    hot = dict(params, logit_scale=jnp.float32(10.0))
    assert float(model.apply({"params": hot}, None, tokens())[2]["temperature"]) == 100.0


def test_every_param_carries_logical_axis_names():
    model = two_towers.Model(image=dict(TINY_IMAGE, pool="map", num_classes=3), text=TINY_TEXT,
                             out_dim=16)
    abstract = jax.eval_shape(model.init, jax.random.key(0), images(), tokens())
    boxed = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)
    for leaf in boxed:
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= LOGICAL_AXES
    specs = nn.get_partition_spec(abstract)["params"]
    assert specs["img"]["encoderblock_0"]["attn"]["qkv"]["kernel"] == jax.sharding.PartitionSpec(
        "embed", None, "heads", "kv")
    assert specs["img"]["embedding"]["kernel"] == jax.sharding.PartitionSpec(
        None, None, None, "embed")
    assert specs["txt"]["token_embedding"]["embedding"] == jax.sharding.PartitionSpec(
        "vocab", "embed")
    assert specs["img"]["head"]["kernel"] == jax.sharding.PartitionSpec("joint", "classes")


def test_bf16_matmuls_stay_close_to_fp32():
    config = dict(image=TINY_IMAGE, text=TINY_TEXT, out_dim=16)
    model = two_towers.Model(**config)
    model_bf16 = two_towers.Model(image=dict(TINY_IMAGE, dtype_mm="bfloat16"),
                                  text=dict(TINY_TEXT, dtype_mm="bfloat16"), out_dim=16)
    params = random_params(model, images(), tokens())
    abstract_bf16 = jax.eval_shape(model_bf16.init, jax.random.key(0), images(), tokens())
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(abstract_bf16)))
    zimg, ztxt, _ = jax.jit(model.apply)({"params": params}, images(), tokens())
    zimg16, ztxt16, _ = jax.jit(model_bf16.apply)({"params": params}, images(), tokens())
    assert zimg16.dtype == jnp.float32
    # Unit vectors: cosine similarity to the fp32 result.
    assert float(jnp.min(jnp.sum(zimg * zimg16, -1))) > 0.99
    assert float(jnp.min(jnp.sum(ztxt * ztxt16, -1))) > 0.99


def test_bad_inputs_raise_clear_errors():
    model = vit.Model(**TINY_IMAGE)
    params = random_params(model, images())
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\].*\(2, 16, 16, 4\)"):
        model.apply({"params": params}, jnp.zeros((2, 16, 16, 4)))
    with pytest.raises(ValueError, match="18x18 is not divisible by the patch size 4"):
        model.apply({"params": params}, jnp.zeros((2, 18, 18, 3)))
    with pytest.raises(ValueError, match=r"Unknown pool 'max'.*'cls', 'mean', 'map'"):
        vit.Model(**TINY_IMAGE, pool="max").init(jax.random.key(0), images())
    txt = text.Model(**TINY_TEXT)
    txt_params = random_params(txt, tokens())
    with pytest.raises(ValueError, match=r"\[0, 50\).*\[50, 77\]"):
        txt.apply({"params": txt_params}, np.array([[1, 50, 77]], np.int32))
    with pytest.raises(ValueError, match="length <= 8"):
        txt.apply({"params": txt_params}, np.zeros((1, 9), np.int32))


def test_param_counts_per_tower_in_the_log_and_the_full_table_in_a_file(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="absl")  # absl may sit at WARNING after main ran.
    model = two_towers.Model(image=TINY_IMAGE, text=TINY_TEXT, out_dim=16)
    params = random_params(model, images(), tokens())
    counts = overview.log_param_counts(params, name="tiny clip", table_path=tmp_path / "t.txt")
    table = (tmp_path / "t.txt").read_text()
    assert "img/embedding/kernel" in table and "txt/" in table
    assert "img/embedding/kernel" not in caplog.text
    assert counts["total"] == sum(p.size for p in jax.tree.leaves(params))
    assert counts["logit_scale"] == 1
    assert counts["img"] == sum(p.size for p in jax.tree.leaves(params["img"]))
    assert "tiny clip parameter counts" in caplog.text


def clip_loss(model, params):
    """A scalar of both towers' outputs, for comparing values and gradients across layouts."""
    zimg, ztxt, out = model.apply({"params": params}, images(), tokens())
    return jnp.sum(zimg @ ztxt.T) * out["temperature"]


def memory_levers(scan=False, remat_policy="none", image=TINY_IMAGE):
    return two_towers.Model(image=dict(image, scan=scan, remat_policy=remat_policy),
                            text=dict(TINY_TEXT, scan=scan, remat_policy=remat_policy), out_dim=16)


def test_scanned_towers_match_looped_ones_with_stacked_params():
    looped, scanned = memory_levers(), memory_levers(scan=True)
    params = random_params(looped, images(), tokens())
    stacked = vit_params.stack_layers(params)
    abstract = nn.unbox(jax.eval_shape(scanned.init, jax.random.key(0), images(), tokens()))
    assert jax.tree.map(lambda p: p.shape, stacked) == jax.tree.map(lambda p: p.shape,
                                                                     abstract["params"])
    assert stacked["img"]["encoderblock"]["attn"]["qkv"]["kernel"].shape == (2, 32, 3, 2, 16)
    jax.tree.map(np.testing.assert_array_equal, vit_params.unstack_layers(stacked), params)
    zimg, ztxt, out = looped.apply({"params": params}, images(), tokens())
    zimg_s, ztxt_s, out_s = scanned.apply({"params": stacked}, images(), tokens())
    np.testing.assert_allclose(zimg_s, zimg, atol=1e-5)
    np.testing.assert_allclose(ztxt_s, ztxt, atol=1e-5)
    for key in ("img/block0", "img/block1", "txt/block1"):
        np.testing.assert_allclose(out_s[key], out[key], atol=1e-5)


@functools.cache
def looped_reference(adapter_name):
    """(image config, params, loss, gradients) of the looped towers without remat."""
    image = dict(TINY_IMAGE, adapter=adapter_name and dict(name=adapter_name))
    model = memory_levers(image=image)
    params = random_params(model, images(), tokens())
    loss, grads = jax.jit(jax.value_and_grad(functools.partial(clip_loss, model)))(params)
    return image, params, loss, grads


@pytest.mark.parametrize("scan, remat_policy, adapter_name", [
    (False, "minimal", None), (False, "full", None), (True, "none", None),
    (True, "minimal", None), (True, "full", None), (False, "full", "lora"),
])
def test_remat_and_scan_keep_values_and_gradients(scan, remat_policy, adapter_name):
    image, params, loss, grads = looped_reference(adapter_name)
    model = memory_levers(scan, remat_policy, image=image)
    if scan:
        params = vit_params.stack_layers(params)
    loss_and_grads = jax.value_and_grad(functools.partial(clip_loss, model))
    jaxpr = str(jax.make_jaxpr(loss_and_grads)(params))
    assert ("remat" in jaxpr) == (remat_policy != "none")
    assert ("scan" in jaxpr) == scan
    loss_2, grads_2 = jax.jit(loss_and_grads)(params)
    np.testing.assert_allclose(loss_2, loss, rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5),
                 vit_params.unstack_layers(grads_2), grads)


def test_scanned_params_are_fully_sharded_over_fsdp():
    mesh = sharding.make_mesh(data=1, fsdp=8)
    model = vit.Model(variant="B/16", scan=True, remat_policy="full")
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    shardings = sharding.logical_shardings(mesh, abstract)["params"]
    qkv = shardings["encoderblock"]["attn"]["qkv"]["kernel"]
    assert qkv.spec == jax.sharding.PartitionSpec(None, "fsdp", None, "tensor", None)
    leaves = jax.tree.leaves(nn.unbox(abstract))
    total = sum(leaf.size for leaf in leaves)
    per_device = sum(math.prod(s.shard_shape(leaf.shape))
                     for leaf, s in zip(leaves, jax.tree.leaves(shardings)))
    assert nn.unbox(abstract)["params"]["encoderblock"]["mlp"]["fc1"]["kernel"].shape == (
        12, 768, 3072)
    assert per_device < 1.05 * total / 8, (per_device, total)


def test_bad_memory_options_raise_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown remat_policy 'all'.*'none', 'minimal', 'full'"):
        vit.Model(**TINY_IMAGE, remat_policy="all").init(jax.random.key(0), images())
    with pytest.raises(ValueError, match=r"Unknown remat_policy 'dots'.*'none', 'minimal'"):
        text.Model(**TINY_TEXT, remat_policy="dots").init(jax.random.key(0), tokens())
    with pytest.raises(ValueError, match="scan=True .* cannot hold adapters; set scan=False"):
        vit.Model(**TINY_IMAGE, scan=True, adapter=dict(name="film")).init(jax.random.key(0),
                                                                          images())
    with pytest.raises(TypeError, match="unexpected keyword argument 'scanned'"):
        two_towers.Model(image=dict(TINY_IMAGE, scanned=True)).init(jax.random.key(0), images(),
                                                                     None)
    adapted = vit.Model(**TINY_IMAGE, adapter=dict(name="film", blocks=(1, 2)))
    with pytest.raises(ValueError, match="adapters on some blocks"):
        vit_params.stack_layers(random_params(adapted, images()))
    with pytest.raises(ValueError, match="not encoderblock_0 ... encoderblock_1"):
        vit_params.stack_layers({"encoderblock_0": {"w": jnp.ones(2)},
                                 "encoderblock_2": {"w": jnp.ones(2)}})
