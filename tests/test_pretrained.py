"""Named pretrained models: checksummed files, clear errors, and the shipped models' cards."""
import dataclasses
import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wlsft_jax import checks, model_cards, pretrained, recipes
from wlsft_jax.data import world
from wlsft_jax.models import vit

# Shipped models' cards on the first 500 test images per domain (`model_cards.card(name,
# examples=500)` when the file was made); a rebuilt or damaged file must land within 2 points.
CARDS_500 = {
    "world_clip": dict(photo=62.2, sketch=57.0, painting=63.2, clipart=70.2, neon=61.0),
    "world_dino": dict(photo=22.6, sketch=7.6, painting=11.2, clipart=10.0, neon=12.2),
}


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty weights directory with a one-model registry the test fills in."""
    monkeypatch.setattr(pretrained, "DIRECTORY", tmp_path)
    monkeypatch.setattr(pretrained, "MODELS", {})
    return tmp_path


def _register(name, path, kind="vit"):
    pretrained.MODELS[name] = pretrained.Named(
        file=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), kind=kind,
        config="configs/pretrain_dino.py", stage="dino")


def _tiny_vit():
    model = vit.Model(variant="mu/8", width=16, depth=1, mlp_dim=32, num_heads=2, image_size=16)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    return model, params, fields


def test_a_saved_model_loads_back_exactly_and_its_checksum_is_checked(weights_dir):
    model, params, fields = _tiny_vit()
    pretrained.save(weights_dir / "tiny.npz", params, fields)
    _register("tiny", weights_dir / "tiny.npz")
    loaded_model, loaded, tokenizer = pretrained.load("tiny")
    assert tokenizer is None and loaded_model == model
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), loaded)
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.apply({"params": params}, images)[0],
                                  loaded_model.apply({"params": loaded}, images)[0])


def test_a_damaged_or_missing_file_is_a_one_line_error_saying_how_to_rebuild(weights_dir):
    _, params, fields = _tiny_vit()
    pretrained.save(weights_dir / "tiny.npz", params, fields)
    _register("tiny", weights_dir / "tiny.npz")
    data = bytearray((weights_dir / "tiny.npz").read_bytes())
    data[-100] ^= 1
    (weights_dir / "tiny.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"sha256 .* \(damaged or replaced\); rebuild it with "
                                         r"`python -m wlsft_jax.main --config=configs/pretrain"):
        pretrained.load("tiny")
    (weights_dir / "tiny.npz").unlink()
    with pytest.raises(FileNotFoundError, match="is missing; rebuild it with"):
        pretrained.load("tiny")


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError,
                       match=r"'world_clipp'; valid names: \['world_clip', 'world_dino'\]"):
        pretrained.load("world_clipp")


@pytest.mark.parametrize("change, message", [
    (dict(name="world_clipp"), r"init.name .*'world_clipp'; valid choices"),
    (dict(name="an_image_tower"), r"'an_image_tower' is a 'vit' model; this config needs a "
                                  r"'clip' model: one of \['world_clip'\]"),
    (dict(path="/some/dir"), r"init.path='/some/dir' is not read with init.format='pretrained'"),
])
def test_init_from_a_named_model_is_checked(change, message, monkeypatch):
    monkeypatch.setitem(pretrained.MODELS, "an_image_tower", pretrained.Named(
        file="an_image_tower.npz", sha256="", kind="vit", config="configs/pretrain_dino.py",
        stage="dino"))
    config = recipes.base(stages=("ft",), ft=recipes.stage("ft", steps=100))
    config.init = recipes.pretrained_init("world_clip")
    config.init.update(change)
    with pytest.raises(ValueError, match=message):
        checks.check_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(pretrained.MODELS))
def test_each_shipped_model_matches_its_checksum_and_its_card(name):
    if name not in CARDS_500:
        pytest.fail(f"{name} has no card in CARDS_500")
    scores = model_cards.card(name, examples=500)
    for domain in world.DOMAINS:
        assert abs(100 * scores[domain] - CARDS_500[name][domain]) <= 2.0, (domain, scores)
