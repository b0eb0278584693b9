"""Every real-data config (`configs/<x>_clip.py:<task>`) builds its whole pipeline and model on
mocks, without training: mocked TFDS records and ObjectNet folder, a tiny random Hugging Face CLIP
with a tiny BPE vocabulary in place of ViT-B/16, 16-px images."""
import functools
import json
import os
import warnings

import jax
import numpy as np
import pytest
from etils import epath

from wlsft_jax import experiment, methods, recipes, sharding
from wlsft_jax.data import imagenet_classes, pipeline, tasks, templates
from wlsft_jax.evals import zero_shot
from test_configs import REPO, load
from test_convert import save_hf_clip
from test_sources import NUM_MOCK_EXAMPLES, mocked_tfds, png_bytes, tfds_dir, write_objectnet  # noqa: F401
from test_tokenizer import _write_small_clip_files

IMAGE_SIZE, CONTEXT_LENGTH, BATCH = 16, 16, 4
REAL_CONFIGS = [(name, task) for name in ("flyp_clip", "ft_clip", "lp_clip", "lpft_clip")
                for task in recipes.REAL_TASKS]
# The ImageNet classes of the mocked ImageNet-R / -A records (TFDS labels are ImageNet ids).
SUBSET_IDS = {"imagenet_r": imagenet_classes.IMAGENET_R_CLASS_IDS,
              "imagenet_a": imagenet_classes.IMAGENET_A_CLASS_IDS}


def mock_records(name):
    """NUM_MOCK_EXAMPLES PNG records of dataset `name`, labels 0..5 (or the subset's ids)."""
    labels = SUBSET_IDS.get(name, range(NUM_MOCK_EXAMPLES))
    return [{"image": png_bytes(), "label": np.int64(labels[i])}
            for i in range(NUM_MOCK_EXAMPLES)]


@pytest.fixture(scope="module")
def data_dir(tfds_dir):  # noqa: F811
    """The mocked TFDS datasets plus an ObjectNet folder beside them."""
    write_objectnet(epath.Path(tfds_dir), {"alarm_clock": 2, "banana": 1, "thing": 1})
    return tfds_dir


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A tiny random HF CLIP whose vocabulary is the tiny BPE's, with vocab.json/merges.txt."""
    directory = tmp_path_factory.mktemp("hf_clip")
    vocab_json, _ = _write_small_clip_files(directory)
    vocab_size = len(json.loads(vocab_json.read_text()))  # End of text is the last token.
    save_hf_clip(directory, image_size=IMAGE_SIZE, patch_size=8, depth=1, act="quick_gelu",
                 text_length=CONTEXT_LENGTH, eos=vocab_size - 1, vocab_size=vocab_size)
    return str(directory)


def real_config(name, task_name, data_dir, hf_clip_dir):
    """`configs/<name>.py:<task_name>` pointed at the mocks, with 16-px images."""
    return load(os.path.join(REPO, "configs", f"{name}.py:{task_name}"),
                f"--config.init.path={hf_clip_dir}", f"--config.data.data_dir={data_dir}",
                f"--config.data.image_size={IMAGE_SIZE}",
                f"--config.tokenizer.context_length={CONTEXT_LENGTH}",
                "--config.model.dtype=float32", "--config.eval.templates=simple",
                "--config.data.worker_count=0")


@functools.cache
def built(task_name, data_dir, hf_clip_dir):
    """(config, task, tokenizer, models, CLIP params, classifier params) of a task, built once:
    the real configs of one task share its data section."""
    config = real_config("ft_clip", task_name, data_dir, hf_clip_dir)
    with mocked_tfds(data_dir, mock_records), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ObjectNet at")  # The mocked copy holds 3 images.
        task = tasks.build(config.data, seed=config.seed)
    tokenizer = experiment.build_tokenizer(config, epath.Path(hf_clip_dir))
    models, clip_params = experiment.initial_clip(
        config, experiment.build_models(config, tokenizer, num_classes=len(task.class_names)))
    class_tokens = zero_shot.class_prompt_tokens(tokenizer, task.class_names,
                                                 templates.get_templates(config.eval.templates))
    head = jax.jit(lambda params: zero_shot.zero_shot_head(models["clip"], params, class_tokens))(
        clip_params)
    return config, task, tokenizer, models, clip_params, {"img": clip_params["img"], "head": head}


@pytest.mark.parametrize("name,task_name", REAL_CONFIGS, ids=lambda x: x)
def test_real_config_checks_and_trains_on_its_task(name, task_name, data_dir, hf_clip_dir):
    """check_config passes; each stage's method gives a train batch and a finite loss."""
    config = real_config(name, task_name, data_dir, hf_clip_dir)
    recipes.check_config(config)
    experiment.check_names(config)
    _, task, tokenizer, models, clip_params, classifier_params = built(task_name, data_dir,
                                                                       hf_clip_dir)
    num_classes = len(task.class_names)
    for stage in config.stages:
        stage_config = config[stage]
        method = methods.build(stage_config.method, stage_config=stage_config, config=config,
                               tokenizer=tokenizer, models=models, task=task,
                               templates=templates.get_templates(
                                   stage_config.get("templates", "simple")))
        batch = next(iter(pipeline.train_loader(
            method.train_source, global_batch_size=BATCH, operations=method.train_operations,
            seed=0, shard_index=0, shard_count=1)))
        assert batch["image"].shape == (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert batch["image"].dtype == np.float32
        if "label" in batch:
            assert 0 <= batch["label"].min() and batch["label"].max() < num_classes
        else:
            assert batch["tokens"].shape == (BATCH, CONTEXT_LENGTH)
        params = clip_params if method.model is models["clip"] else classifier_params
        loss, _ = jax.jit(method.loss)(params, batch, jax.random.key(0))
        assert np.isfinite(float(loss))


@pytest.mark.parametrize("task_name", recipes.REAL_TASKS)
def test_real_task_eval_sets_score_in_their_classes(task_name, data_dir, hf_clip_dir):
    """The zero-shot head has the task's classes; every eval set's batch goes through the
    classifier and its logits transform onto the set's own classes."""
    config, task, _, models, _, classifier_params = built(task_name, data_dir, hf_clip_dir)
    num_classes = len(task.class_names)
    assert num_classes == {"imagenet": 1000, "cifar10_stl": 9, "domainnet": 40}[task_name]
    assert classifier_params["head"]["kernel"].shape[-1] == num_classes
    assert [s.name for s in task.eval_sets] == [config.data.id_domain, *config.data.ood_domains]
    assert [s.kind for s in task.eval_sets] == ["id"] + ["ood"] * len(config.data.ood_domains)
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    logits_fn = jax.jit(lambda params, images: models["classifier"].apply(
        {"params": params}, images)[0])
    for eval_set in task.eval_sets:
        batch = next(iter(pipeline.eval_batches(eval_set.source, batch_size=BATCH,
                                                operations=eval_set.operations,
                                                shard_index=0, shard_count=1)))
        assert batch["image"].shape == (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert 0 <= batch["label"].min() and batch["label"].max() < eval_set.num_classes
        logits = logits_fn(classifier_params, batch["image"])
        assert logits.shape == (BATCH, num_classes)
        transform = eval_set.logits_transform or (lambda x: x)
        assert transform(logits).shape == (BATCH, eval_set.num_classes)
        with jax.set_mesh(mesh):
            counts = zero_shot.jit_counts(models["classifier"], eval_set.logits_transform)(
                classifier_params, sharding.put_batch(mesh, batch))
        assert int(counts["count"]) == int(batch["mask"].sum())


@pytest.mark.parametrize("overrides,message", [
    ({"id_domain": "imagenet_r"}, r"'imagenet_r' in data.id_domain is not supported there; "
                                  r"valid datasets: \['imagenet2012', 'cifar10'"),
    ({"ood_domains": ("imagenet2012",)}, r"valid datasets: \['imagenet_v2'"),
    ({"pretrain_domains": ("photo",)}, "real data has no pretraining captions"),
    ({"source": "laion"}, r"valid choices: \['world', 'real'\]"),
])
def test_real_data_names_are_checked_before_reading(overrides, message):
    data = recipes.real_data("imagenet", **overrides)
    with pytest.raises(ValueError, match=message):
        tasks.check_names(data)


def test_world_rejects_real_data_keys():
    with pytest.raises(ValueError, match="data.data_dir='/x' applies to data.source='real'"):
        tasks.check_names(recipes.world_data(data_dir="/x"))


def test_ood_sets_outside_the_id_label_space_are_errors(data_dir):
    # CIFAR-10 and STL-10 both have 10 classes, but not the same ones.
    data = recipes.real_data("cifar10_stl", label_space=None, data_dir=data_dir)
    with mocked_tfds(data_dir, mock_records), pytest.raises(
            ValueError, match="stl10's 10 classes are not the ID classifier's 10 classes.*"
                              "'cifar_stl'"):
        tasks.build(data, seed=0)
