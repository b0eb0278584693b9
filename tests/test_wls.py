"""Weak language supervision through the one training loop: only adapters and the projection
train, the encoders stay bitwise frozen and carry no optimizer state."""
import re

import jax
import numpy as np
import pytest
from etils import epath

from wlsft_jax import methods, recipes, sharding, train
from wlsft_jax.data import tasks, templates
from wlsft_jax.models import adapters, wls
from test_train import RecordingWriter, _tokenizer, flat, saved_state

TINY_IMAGE = dict(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
TINY_TEXT = dict(variant=None, width=24, depth=1, mlp_dim=48, num_heads=2)
TRAINED = re.compile(r"img/.*/(film|replay|lora)/.*|img/proj/.*")


def wls_run(adapter, workdir):
    """6 WLS steps of batch 16 on world captions; returns (initial params, trained, writer)."""
    tokenizer = _tokenizer()
    config = recipes.base(stages=("wls",), wls=recipes.stage(
        "wls", steps=6, batch_size=16, log_every=1, checkpoint_every=6,
        optim=dict(lr=1e-2, warmup_steps=1, schedule=list(methods.WLS_SCHEDULE))))
    config.data = recipes.world_data(image_size=16, train_examples_per_domain=64,
                                     worker_count=0)
    model = wls.Model(image=dict(TINY_IMAGE, image_size=16, adapter=adapter),
                      text=dict(TINY_TEXT, vocab_size=tokenizer.vocab_size,
                                context_length=tokenizer.context_length,
                                pad_id=tokenizer.pad_id))
    method = methods.build("wls", stage_config=config.wls, config=config, tokenizer=tokenizer,
                           models={"wls": model}, task=tasks.build(config.data, seed=0),
                           templates=templates.SIMPLE_TEMPLATES)
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    init_params = jax.device_get(method.init_params(mesh, 0))
    writer = RecordingWriter()
    with jax.set_mesh(mesh):
        params = train.run(name="wls", stage_config=config.wls, method=method,
                           init_params=init_params, mesh=mesh, workdir=epath.Path(workdir),
                           seed=0, writer=writer)
    return init_params, jax.device_get(params), writer


@pytest.mark.parametrize("adapter", [dict(name="token_replay", blocks=(1, 2), num_tokens=2),
                                     dict(name="film"), dict(name="lora", rank=2)],
                         ids=lambda a: a["name"])
def test_wls_trains_only_adapters_and_projection(adapter, tmp_path):
    init_params, params, writer = wls_run(adapter, tmp_path)
    losses = writer.losses("wls")
    assert sorted(losses) == list(range(1, 7)) and all(np.isfinite(list(losses.values())))
    assert losses[6] < losses[1]
    init_params, params = flat(init_params), flat(params)
    trained = sorted(p for p in params if TRAINED.fullmatch(p))
    expected_adapter = {"token_replay": 2, "film": 2 * 2, "lora": 4 * 2}[adapter["name"]]
    assert len(trained) == expected_adapter + 1  # + img/proj/kernel
    for path in params:
        if path in trained:
            assert np.abs(params[path] - init_params[path]).max() > 1e-5, path
        else:  # Encoders, text tower and temperature: bitwise unchanged.
            np.testing.assert_array_equal(params[path], init_params[path], err_msg=path)
    opt_state = list(flat(saved_state(tmp_path, 6)["opt_state"]))
    moments = [p for p in opt_state if "/mu/" in p or "/nu/" in p]
    assert moments
    assert {p.split("/mu/")[-1].split("/nu/")[-1] for p in moments} == set(trained)


def test_wls_rejects_a_projection_set_by_hand():
    model = wls.Model(image=dict(TINY_IMAGE, proj_dim=8), text=dict(TINY_TEXT, vocab_size=10))
    with pytest.raises(ValueError, match="remove proj_dim from image"):
        model.towers()
    assert adapters.ADAPTER_PARAMS_REGEX == r".*/(film|replay|lora)/.*"
