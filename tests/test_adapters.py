"""ViT adapters (FiLM, Token Replay, LoRA): bitwise identity at init, what they change, names,
pretrained params loading unchanged, config errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wlsft_jax.models import adapters, vit
from helpers import images, random_params

TINY = dict(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=4, image_size=16)
ADAPTER_CONFIGS = {
    "film": dict(name="film"),
    "token_replay": dict(name="token_replay", blocks=(1, 2), num_tokens=3),
    "lora": dict(name="lora", rank=2, scale=2.0),
}


def with_pretrained(model, pretrained, x, seed=1):
    """`model`'s init params (adapters at init) with every pretrained leaf replaced."""
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), x)["params"])

    def merge(ours, theirs):
        if not isinstance(theirs, dict):
            return theirs
        return {**ours, **{k: merge(ours[k], v) for k, v in theirs.items()}}

    return merge(params, pretrained)


def adapter_paths(params):
    return sorted("/".join(str(k.key) for k in path)
                  for path, _ in jax.tree_util.tree_leaves_with_path(params)
                  if any(str(k.key) in adapters.PARAM_NAMES.values() for k in path))


@pytest.fixture(scope="module")
def pretrained():
    model = vit.Model(**TINY, pool="cls", proj_dim=8)
    params = random_params(model, images())
    features, out = model.apply({"params": params}, images())
    jitted, _ = jax.jit(model.apply)({"params": params}, images())
    return dict(params=params, features=features, out=out, jitted=jitted)


@pytest.mark.parametrize("name", sorted(ADAPTER_CONFIGS))
def test_every_adapter_is_bitwise_the_identity_at_init(name, pretrained):
    model = vit.Model(**TINY, pool="cls", proj_dim=8, adapter=ADAPTER_CONFIGS[name])
    params = with_pretrained(model, pretrained["params"], images())
    # Op by op, every output is bitwise the pretrained one: the adapters add exact zeros or
    # multiply by exact ones.
    features, out = model.apply({"params": params}, images())
    np.testing.assert_array_equal(features, pretrained["features"])
    for key, value in pretrained["out"].items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)
    # Compiled, XLA may fuse the changed graph differently (e.g. FiLM into the next LayerNorm)
    # and round a reduction in another order: ulp-level, as jit vs op-by-op of the same model.
    jitted, _ = jax.jit(model.apply)({"params": params}, images())
    np.testing.assert_allclose(jitted, pretrained["jitted"], rtol=0, atol=1e-6)
    # The adapter's own params are not all zero (tokens, LoRA's down projections are random):
    # the identity comes from its zero-init gate / scale / up projection.
    if name != "film":
        assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(
            {k: v for k, v in params["encoderblock_1"].items() if k in ("replay", "lora")}))


@pytest.mark.parametrize("name", sorted(ADAPTER_CONFIGS))
def test_adapters_add_params_under_new_names_only(name, pretrained):
    config = ADAPTER_CONFIGS[name]
    model = vit.Model(**TINY, pool="cls", proj_dim=8, adapter=config)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images())["params"])
    pretrained_shapes = jax.tree.map(lambda a: a.shape, pretrained["params"])
    adapted_shapes = jax.tree.map(lambda a: a.shape, params)
    blocks = range(*config.get("blocks", (0, TINY["depth"])))
    expected = {"film": ["film/scale", "film/shift"],
                "token_replay": ["replay/gate", "replay/tokens"],
                "lora": ["lora/query_down", "lora/query_up", "lora/value_down", "lora/value_up"]}
    assert adapter_paths(params) == sorted(f"encoderblock_{i}/{p}" for i in blocks
                                           for p in expected[name])
    for i in range(TINY["depth"]):  # Pretrained names and shapes unchanged.
        block = dict(adapted_shapes[f"encoderblock_{i}"])
        block.pop(adapters.PARAM_NAMES[name], None)
        assert block == pretrained_shapes[f"encoderblock_{i}"]
    assert {k: v for k, v in adapted_shapes.items() if not k.startswith("encoderblock")} == \
        {k: v for k, v in pretrained_shapes.items() if not k.startswith("encoderblock")}
    if name == "token_replay":
        assert params["encoderblock_1"]["replay"]["tokens"].shape == (3, 32)
        assert params["encoderblock_1"]["replay"]["gate"].shape == (2,)


def test_trained_adapters_change_the_output(pretrained):
    for name, config in ADAPTER_CONFIGS.items():
        model = vit.Model(**TINY, pool="cls", proj_dim=8, adapter=config)
        params = with_pretrained(model, pretrained["params"], images())
        block = dict(params["encoderblock_1"])
        key = adapters.PARAM_NAMES[name]
        rng = np.random.RandomState(0)  # Per channel: the final LayerNorm would undo a constant.
        block[key] = jax.tree.map(lambda a: a + 0.1 * rng.randn(*a.shape), block[key])
        features, _ = jax.jit(model.apply)({"params": dict(params, encoderblock_1=block)},
                                           images())
        assert np.abs(features - pretrained["jitted"]).max() > 1e-3, name


def test_lora_equals_the_pretrained_model_with_the_low_rank_update_merged(pretrained):
    model = vit.Model(**TINY, pool="cls", proj_dim=8, adapter=ADAPTER_CONFIGS["lora"])
    params = with_pretrained(model, pretrained["params"], images())
    rng = np.random.RandomState(0)
    merged = dict(pretrained["params"])
    for i in range(TINY["depth"]):
        name = f"encoderblock_{i}"
        lora = {k: jnp.asarray(rng.randn(*v.shape) * 0.1, jnp.float32)
                for k, v in params[name]["lora"].items()}
        params[name] = dict(params[name], lora=lora)
        kernel = np.array(merged[name]["attn"]["qkv"]["kernel"])
        scale = ADAPTER_CONFIGS["lora"]["scale"]
        kernel[:, 0] += scale * np.einsum("dr,rhk->dhk", lora["query_down"], lora["query_up"])
        kernel[:, 2] += scale * np.einsum("dr,rhk->dhk", lora["value_down"], lora["value_up"])
        attn = dict(merged[name]["attn"], qkv=dict(merged[name]["attn"]["qkv"], kernel=kernel))
        merged[name] = dict(merged[name], attn=attn)
    with jax.default_matmul_precision("highest"):
        adapted, _ = jax.jit(model.apply)({"params": params}, images())
        reference, _ = jax.jit(vit.Model(**TINY, pool="cls", proj_dim=8).apply)(
            {"params": merged}, images())
    np.testing.assert_allclose(adapted, reference, rtol=0, atol=1e-5)
    assert np.abs(adapted - pretrained["features"]).max() > 1e-3


def test_token_replay_gate_opens_per_head_and_tokens_start_at_the_class_token(pretrained):
    model = vit.Model(**TINY, pool="cls", proj_dim=8, adapter=ADAPTER_CONFIGS["token_replay"])
    params = with_pretrained(model, pretrained["params"], images())
    params = adapters.init_replay_tokens(model, params, images(n=4), rng=jax.random.key(0),
                                         noise_std=1e-3)
    _, out = jax.jit(model.apply)({"params": params}, images(n=4))
    for i in (1,):  # Blocks (1, 2): tokens = mean class token entering the block, + noise.
        tokens = params[f"encoderblock_{i}"]["replay"]["tokens"]
        expected = np.mean(out[f"block{i - 1}"][:, 0], axis=0)
        np.testing.assert_allclose(tokens, np.broadcast_to(expected, tokens.shape), atol=5e-3)
        assert np.abs(tokens[0] - tokens[1]).max() > 0  # The noise makes them differ.
    # Still the identity (gates closed) ...
    apply = jax.jit(model.apply)
    features, _ = apply({"params": params}, images())
    np.testing.assert_allclose(features, pretrained["jitted"], rtol=0, atol=1e-6)
    # ... until a gate opens: one head's gate changes block 1's output, not block 0's.
    block = params["encoderblock_1"]
    block = dict(block, replay=dict(block["replay"], gate=jnp.array([0.5, 0.0])))
    _, opened = apply({"params": dict(params, encoderblock_1=block)}, images())
    _, closed = apply({"params": params}, images())
    assert np.abs(opened["block1"] - closed["block1"]).max() > 1e-3
    np.testing.assert_array_equal(opened["block0"], closed["block0"])


def test_the_adapter_block_range_selects_blocks():
    settings = adapters.block_settings(dict(name="film", blocks=(1, 3)), 4)
    assert [s is not None for s in settings] == [False, True, True, False]
    assert adapters.block_settings(None, 2) == [None, None]
    assert adapters.block_settings(dict(name="lora"), 1) == [dict(name="lora", rank=4,
                                                                  scale=1.0)]


@pytest.mark.parametrize("adapter,message", [
    (dict(name="prefix"), r"Unknown adapter 'prefix'.*'film', 'lora', 'token_replay'"),
    (dict(rank=2), r"Unknown adapter None.*'film'"),
    (dict(name="film", rank=4), r"Unknown setting\(s\) \['rank'\].*'blocks'.*'name'"),
    (dict(name="lora", rank=0), r"rank must be a positive integer"),
    (dict(name="token_replay", blocks=(2, 9)), r"blocks=\(2, 9\).*depth=2"),
])
def test_bad_adapter_configs_are_errors_listing_valid_choices(adapter, message):
    with pytest.raises(ValueError, match=message):
        vit.Model(**TINY, adapter=adapter).init(jax.random.key(0), images())


def test_init_replay_tokens_needs_a_token_replay_model(pretrained):
    model = vit.Model(**TINY, adapter=dict(name="film"))
    with pytest.raises(ValueError, match="token_replay"):
        adapters.init_replay_tokens(model, {}, images(), rng=jax.random.key(0))
