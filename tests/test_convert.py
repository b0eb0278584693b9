"""Converters: parity with PyTorch CLIP / ViT, HF export round trip, big_vision npz, bad keys."""
import logging

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors", reason="the converters read and write safetensors")

from safetensors.numpy import load_file, save_file  # noqa: E402

from wlsft_jax.convert import (from_big_vision, from_hf_clip, from_hf_vit,  # noqa: E402
                               to_big_vision_npz, to_hf_clip)
from wlsft_jax.convert import big_vision  # noqa: E402
from wlsft_jax.models import two_towers, vit  # noqa: E402
from helpers import PARITY_EXTRA, random_params, save_hf_clip  # noqa: E402

TOLERANCE = 1e-4


def random_images(n, size, seed=0):
    return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def random_tokens(n, length, vocab, eot_id, seed=0):
    """Token rows ending in `eot_id` at random positions, zero padded."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((n, length), np.int32)
    for row, end in zip(ids, rng.randint(1, length, n)):
        row[:end] = rng.randint(1, eot_id, end)
        row[end] = eot_id
    return ids


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


CLIP_CONFIGS = {
    "quick_gelu-16px-p4-argmax": dict(
        image_size=16, patch_size=4, depth=1, act="quick_gelu", text_length=8, eos=2),
    "gelu-24px-p8-eos": dict(
        image_size=24, patch_size=8, depth=2, act="gelu", text_length=12, eos=63),
}


def torch_clip_embeddings(model, images, tokens):
    import torch
    with torch.no_grad():
        zimg = model.get_image_features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
        ztxt = model.get_text_features(torch.from_numpy(tokens).long())
    return zimg.pooler_output.numpy(), ztxt.pooler_output.numpy()


def jax_clip_embeddings(model, params, images, tokens):
    with jax.default_matmul_precision("highest"):
        _, _, out = jax.jit(model.apply)({"params": params}, images, tokens)
    return out["img/pre_logits"], out["txt/pre_logits"]


@pytest.mark.parametrize("name", sorted(CLIP_CONFIGS))
def test_hf_clip_parity(tmp_path, name):
    config = CLIP_CONFIGS[name]
    torch_model, path = save_hf_clip(tmp_path, **config)
    model, params = from_hf_clip(path)
    images = random_images(3, config["image_size"])
    tokens = random_tokens(3, config["text_length"], 64, 63)
    expected = torch_clip_embeddings(torch_model, images, tokens)
    got = jax_clip_embeddings(model, params, images, tokens)
    assert max_diff(got[0], expected[0]) <= TOLERANCE
    assert max_diff(got[1], expected[1]) <= TOLERANCE
    np.testing.assert_allclose(params["logit_scale"], 3.0)


def test_to_hf_clip_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch", reason=PARITY_EXTRA)
    model = two_towers.Model(
        image=dict(variant=None, width=32, depth=2, mlp_dim=48, num_heads=2, patch_size=4,
                   image_size=16, ln_pre=True, patch_bias=False, act="quick_gelu"),
        text=dict(variant=None, width=32, depth=1, mlp_dim=48, num_heads=4, vocab_size=40,
                  context_length=10, act="gelu"),
        out_dim=16)
    images, tokens = random_images(2, 16), random_tokens(2, 10, 40, 39)
    params = random_params(model, images, tokens)  # Every tensor nonzero, so every mapping counts.
    to_hf_clip(model, params, str(tmp_path))
    torch_model = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
    expected = jax_clip_embeddings(model, params, images, tokens)
    got = torch_clip_embeddings(torch_model, images, tokens)
    assert max_diff(got[0], expected[0]) <= TOLERANCE
    assert max_diff(got[1], expected[1]) <= TOLERANCE
    reloaded_model, reloaded = from_hf_clip(str(tmp_path))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), reloaded, params)
    assert reloaded_model.towers()[0].sizes() == model.towers()[0].sizes()
    dino_like = model.clone(image=dict(model.image, ln_pre=False, pool="mean"))
    with pytest.raises(ValueError, match=r"needs: \['image ln_pre=True', \"image pool='cls'\"\]"):
        to_hf_clip(dino_like, params, str(tmp_path / "refused"))


@pytest.mark.parametrize("image_size,patch_size,depth,eps", [(16, 4, 2, 1e-12), (32, 8, 1, 1e-6)])
def test_hf_vit_parity(tmp_path, image_size, patch_size, depth, eps):
    torch = pytest.importorskip("torch", reason=PARITY_EXTRA)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=depth, num_attention_heads=3,
                                    intermediate_size=64, image_size=image_size,
                                    patch_size=patch_size, layer_norm_eps=eps)
    torch_model = transformers.ViTModel(config).eval()  # Includes the (ignored) pooler.
    torch_model.save_pretrained(tmp_path)
    model, params = from_hf_vit(str(tmp_path))
    images = random_images(2, image_size)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state
    with jax.default_matmul_precision("highest"):
        features, out = jax.jit(model.apply)({"params": params}, images)
    assert max_diff(out["encoded"], expected.numpy()) <= TOLERANCE
    np.testing.assert_array_equal(features, out["encoded"][:, 0])


def test_hf_resolution_change_resamples_and_logs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")  # absl may sit at WARNING after main ran.
    _, path = save_hf_clip(tmp_path, **CLIP_CONFIGS["quick_gelu-16px-p4-argmax"])
    model, params = from_hf_clip(path, image_size=32)
    assert params["img"]["pos_embedding"].shape == (1, 64, 48)
    assert model.towers()[0].image_size == 32
    assert "resampling position embedding from 4x4 to 8x8" in caplog.text
    model, params = from_hf_clip(path, image_size=24, patch_size=6)  # Same 4x4 grid.
    assert params["img"]["embedding"]["kernel"].shape == (6, 6, 3, 48)
    assert "resampling patch kernel from 4x4 to 6x6" in caplog.text
    zimg, _, _ = jax.jit(model.apply)({"params": params}, random_images(2, 24), None)
    assert np.isfinite(zimg).all()


def test_bad_checkpoint_lists_missing_unexpected_and_misshaped(tmp_path):
    _, path = save_hf_clip(tmp_path, **CLIP_CONFIGS["quick_gelu-16px-p4-argmax"])
    with pytest.raises(ValueError, match=r"holds a 'clip' model.*\['vit'\]"):
        from_hf_vit(path)
    file = f"{path}/model.safetensors"
    state = load_file(file)
    del state["text_projection.weight"]
    state["vision_model.extra.weight"] = np.zeros(3, np.float32)
    state["logit_scale"] = np.zeros(2, np.float32)
    save_file(state, file)
    with pytest.raises(ValueError) as error:
        from_hf_clip(path)
    message = str(error.value)
    assert "1 missing key(s):\n  text_projection.weight" in message
    assert "1 unexpected key(s):\n  vision_model.extra.weight" in message
    assert "logit_scale: model needs (), checkpoint has (2,)" in message


def big_vision_model(**overrides):
    config = dict(variant=None, width=32, depth=2, mlp_dim=48, num_heads=2, patch_size=4,
                  image_size=16, num_classes=5, act="gelu_tanh")
    return vit.Model(**{**config, **overrides})


@pytest.mark.parametrize("pool", ["cls", "map"])
def test_big_vision_npz_round_trip(tmp_path, pool):
    model = big_vision_model(pool=pool)
    images = random_images(2, 16)
    params = random_params(model, images)
    to_big_vision_npz(params, tmp_path / "vit.npz")
    with np.load(tmp_path / "vit.npz", allow_pickle=False) as npz:
        assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel" in npz
        assert npz["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape == (32, 48)
    loaded_model, loaded = from_big_vision(str(tmp_path / "vit.npz"))
    assert loaded_model.pool == pool and loaded_model.num_classes == 5
    apply = jax.jit(lambda m, p: m.apply({"params": p}, images), static_argnums=0)
    np.testing.assert_array_equal(apply(loaded_model, loaded)[1]["logits"],
                                  apply(model, params)[1]["logits"])


def test_big_vision_old_layouts_load(tmp_path):
    """Class-token row in `Transformer/posembed_input` and scanned blocks give the same model."""
    model = big_vision_model()
    images = random_images(2, 16)
    params = random_params(model, images)
    state = {k: np.asarray(v) for k, v in big_vision.to_big_vision(params).items()}
    cls_row = np.full((1, 1, 32), 0.1, np.float32)
    state["cls"] = state["cls"] - cls_row
    state["Transformer/posembed_input/pos_embedding"] = np.concatenate(
        [cls_row, state.pop("pos_embedding")], axis=1)
    block_keys = [k for k in state if k.startswith("Transformer/encoderblock_0/")]
    for key in block_keys:
        rest = key.removeprefix("Transformer/encoderblock_0/")
        state[f"Transformer/encoderblock/{rest}"] = np.stack(
            [state.pop(f"Transformer/encoderblock_{i}/{rest}") for i in range(2)])
    np.savez(tmp_path / "old.npz", **state)
    loaded_model, loaded = from_big_vision(str(tmp_path / "old.npz"), keep_head=False)
    assert loaded_model.num_classes is None
    expected = model.apply({"params": params}, images)[0]
    np.testing.assert_allclose(loaded_model.apply({"params": loaded}, images)[0], expected,
                               atol=1e-6)


def test_big_vision_refuses_clip_towers_and_foreign_files(tmp_path):
    model = big_vision_model(ln_pre=True)
    params = random_params(model, random_images(1, 16))
    with pytest.raises(ValueError, match=r"no \['ln_pre'\]"):
        to_big_vision_npz(params, tmp_path / "clip.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a big_vision ViT checkpoint"):
        from_big_vision(str(tmp_path / "other.npz"))
