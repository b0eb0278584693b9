"""Every real-data config (`configs/<x>_clip.py:<task>`) builds its whole pipeline and model on
mocks, without training: mocked TFDS records, ObjectNet, WILDS and BREEDS folders, a tiny random
Hugging Face CLIP with a tiny BPE vocabulary in place of ViT-B/16, 16-px images. The evaluator's
WILDS metrics are checked on hand-made predictions."""
import functools
import json
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils import epath

from wlsft_jax import (checks, context as context_lib, evals, experiment, methods, recipes,
                       sharding)
from wlsft_jax.data import pipeline, tasks, templates, transforms, wilds
from wlsft_jax.evals import zero_shot
from helpers import (NUM_MOCK_EXAMPLES, REPO, SUBSET_IDS, load, mocked_tfds, png_bytes,
                     save_hf_clip, write_breeds, write_fmow, write_iwildcam, write_objectnet,
                     write_small_clip_files)

IMAGE_SIZE, CONTEXT_LENGTH, BATCH = 16, 16, 4
REAL_CONFIGS = [(name, task) for name in ("flyp_clip", "ft_clip", "lp_clip", "lpft_clip")
                for task in recipes.REAL_TASKS]


def mock_records(name):
    """NUM_MOCK_EXAMPLES PNG records of dataset `name`, labels 0..5 (or the subset's ids)."""
    labels = SUBSET_IDS.get(name, range(NUM_MOCK_EXAMPLES))
    return [{"image": png_bytes(), "label": np.int64(labels[i])}
            for i in range(NUM_MOCK_EXAMPLES)]


# WILDS metadata rows: iWildCam (split, file, label); FMoW (split, category, country, time),
# whose WILDS split follows from the year: before 2013 ID, from 2016 the OOD test.
IWILDCAM_ROWS = [("train", "a.jpg", 0), ("train", "b.jpg", 1), ("train", "c.jpg", 2),
                 ("id_test", "d.jpg", 1), ("id_test", "e.jpg", 2), ("test", "f.jpg", 0),
                 ("test", "g.jpg", 2)]
FMOW_ROWS = [("train", "airport", "FRA", "2010-03-01T10:00:00Z"),
             ("train", "dam", "KEN", "2011-03-01T10:00:00Z"),
             ("test", "barn", "USA", "2012-03-01T10:00:00Z"),
             ("test", "zoo", "FRA", "2016-06-01T10:00:00Z"),
             ("test", "dam", "KEN", "2017-01-01T00:00:00Z"),
             ("test", "park", "XXX", "2017-02-01T00:00:00Z")]


@pytest.fixture(scope="module")
def data_dir(tfds_dir):
    """The mocked TFDS datasets plus ObjectNet, WILDS and BREEDS folders beside them."""
    root = epath.Path(tfds_dir)
    write_objectnet(root, {"alarm_clock": 2, "banana": 1, "thing": 1})
    write_iwildcam(root, IWILDCAM_ROWS)
    write_fmow(root, FMOW_ROWS)
    for hierarchy in ("living17", "entity30"):
        write_breeds(root, hierarchy, splits=("train", "val"))
    return tfds_dir


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A tiny random HF CLIP whose vocabulary is the tiny BPE's, with vocab.json/merges.txt."""
    directory = tmp_path_factory.mktemp("hf_clip")
    vocab_json, _ = write_small_clip_files(directory)
    vocab_size = len(json.loads(vocab_json.read_text()))  # End of text is the last token.
    save_hf_clip(directory, image_size=IMAGE_SIZE, patch_size=8, depth=1, act="quick_gelu",
                 text_length=CONTEXT_LENGTH, eos=vocab_size - 1, vocab_size=vocab_size)
    return str(directory)


def real_config(name, task_name, data_dir, hf_clip_dir, *overrides):
    """`configs/<name>.py:<task_name>` pointed at the mocks, with 16-px images."""
    return load(os.path.join(REPO, "configs", f"{name}.py:{task_name}"),
                f"--config.init.path={hf_clip_dir}", f"--config.data.data_dir={data_dir}",
                f"--config.data.image_size={IMAGE_SIZE}",
                f"--config.tokenizer.context_length={CONTEXT_LENGTH}",
                "--config.model.dtype=float32", "--config.eval.templates=simple",
                "--config.data.worker_count=0", *overrides)


@functools.cache
def built(task_name, data_dir, hf_clip_dir):
    """(config, task, tokenizer, models, CLIP params, classifier params) of a task, built once:
    the real configs of one task share its data section."""
    config = real_config("ft_clip", task_name, data_dir, hf_clip_dir)
    with mocked_tfds(data_dir, mock_records), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ObjectNet at")  # The mocked copy holds 3 images.
        task = tasks.build(config.data, seed=config.seed)
    tokenizer = context_lib.build_tokenizer(config, epath.Path(hf_clip_dir))
    models, clip_params = context_lib.initial_weights(config, tokenizer,
                                                      num_classes=len(task.class_names))
    class_tokens = zero_shot.class_prompt_tokens(tokenizer, task.class_names,
                                                 templates.get_templates(config.eval.templates))
    head = jax.jit(lambda params: zero_shot.zero_shot_head(models["clip"], params, class_tokens))(
        clip_params)
    return config, task, tokenizer, models, clip_params, {"img": clip_params["img"], "head": head}


def built_context(config, *, task, models, tokenizer=None, mesh=None):
    """An `experiment`'s shared parts of `config` with its task, models and tokenizer given."""
    context = context_lib.Context(config, workdir=None, mesh=mesh)
    context.task, context.models, context.tokenizer = task, models, tokenizer
    return context


@pytest.mark.parametrize("name,task_name", REAL_CONFIGS, ids=lambda x: x)
def test_real_config_checks_and_trains_on_its_task(name, task_name, data_dir, hf_clip_dir):
    """check_config passes; each stage's method that trains by the loop gives a train batch
    and a finite loss."""
    config = real_config(name, task_name, data_dir, hf_clip_dir)
    checks.check_config(config)
    experiment.check_names(config)
    _, task, tokenizer, models, clip_params, classifier_params = built(task_name, data_dir,
                                                                       hf_clip_dir)
    num_classes = len(task.class_names)
    context = built_context(config, task=task, models=models, tokenizer=tokenizer)
    for stage in config.stages:
        stage_config = config[stage]
        if not methods.trains_by_loop(stage_config.method):
            continue  # `lp`'s probe: fitted on features, no training batch.
        method = methods.get(stage_config.method).build(context, stage, stage_config).spec
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


def test_memory_levers_reach_a_hugging_face_clip(data_dir, hf_clip_dir):
    """scan / remat_policy set on the command line apply to the checkpoint's towers (params
    stacked to match), and the towers compute what the looped ones do."""
    levers = ("--config.model.img.scan=True", "--config.model.img.remat_policy=full",
              "--config.model.txt.scan=True", "--config.model.txt.remat_policy=minimal")
    outputs = []
    for overrides in ((), levers):
        config = real_config("flyp_clip", "imagenet", data_dir, hf_clip_dir, *overrides)
        checks.check_config(config)
        tokenizer = context_lib.build_tokenizer(config, epath.Path(hf_clip_dir))
        models, params = context_lib.initial_weights(config, tokenizer, num_classes=3)
        clip = models["clip"]
        assert (clip.image["scan"], clip.text["scan"]) == (bool(overrides),) * 2
        assert ("encoderblock" in params["img"]) == ("encoderblock" in params["txt"]) == bool(
            overrides)
        images = jax.random.uniform(jax.random.key(0), (2, IMAGE_SIZE, IMAGE_SIZE, 3))
        tokens = tokenizer.encode(["a photo of a cat.", "a dog."])
        zimg, ztxt, _ = clip.apply({"params": params}, images, tokens)
        outputs.append((zimg, ztxt))
    np.testing.assert_allclose(outputs[1][0], outputs[0][0], atol=1e-5)
    np.testing.assert_allclose(outputs[1][1], outputs[0][1], atol=1e-5)


@pytest.mark.parametrize("task_name", recipes.REAL_TASKS)
def test_real_task_eval_sets_score_in_their_classes(task_name, data_dir, hf_clip_dir):
    """The zero-shot head has the task's classes; every eval set's batch goes through the
    classifier and its logits transform onto the set's own classes."""
    config, task, _, models, _, classifier_params = built(task_name, data_dir, hf_clip_dir)
    num_classes = len(task.class_names)
    assert num_classes == {"imagenet": 1000, "cifar10_stl": 9, "domainnet": 40, "iwildcam": 3,
                           "fmow": 62, "living17": 17, "entity30": 30}[task_name]
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
    ({"id_domain": "iwildcam/ood"}, r"'iwildcam/ood' in data.id_domain is not supported there; "
                                    r"valid datasets: \[.*'iwildcam/id', 'fmow/id', "
                                    r"'living17/source', 'entity30/source'\]"),
    ({"ood_domains": ("living17/source",)}, r"valid datasets: \[.*'iwildcam/ood', 'fmow/ood', "
                                            r"'living17/target', 'entity30/target'\]"),
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


def test_a_report_metric_that_a_dataset_does_not_record_is_an_error():
    config = load(os.path.join(REPO, "configs", "ft_clip.py:imagenet"),
                  "--config.evals.zero_shot.report_metrics.ood=macro_f1")
    with pytest.raises(ValueError, match=r"evals.zero_shot reports 'macro_f1' for the ood datasets, "
                                         r"which it does not record for 'imagenet_v2'; its "
                                         r"metrics there: \['top1', 'top5'\]"):
        experiment.check_names(config)
    config = load(os.path.join(REPO, "configs", "ft_clip.py:fmow"),
                  "--config.evals.zero_shot.report_metrics.id=macro_f1")
    with pytest.raises(ValueError, match=r"'fmow/id'; its metrics there: \['top1', 'top5', "
                                         r"'worst_region_top1'\]"):
        experiment.check_names(config)


def test_report_metrics_name_one_metric_for_id_and_one_for_ood():
    config = load(os.path.join(REPO, "configs", "ft_clip.py:fmow"), "--config.init.path=/clip")
    metrics = config.evals.zero_shot.report_metrics
    with config.unlocked():
        metrics.test = "top1"
    with pytest.raises(ValueError, match=r"evals.zero_shot.report_metrics=.* must name a metric "
                                         r"for each of \['id', 'ood'\]"):
        checks.check_config(config)
    with config.unlocked():
        del metrics["test"], metrics["ood"]
    with pytest.raises(ValueError, match=r"must name a metric for each of \['id', 'ood'\]"):
        checks.check_config(config)
    config = load(os.path.join(REPO, "configs", "wls_dino.py"))
    with config.unlocked():
        config.evals.knn.report_metrics = dict(id="top1", ood="top1")
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['report_metrics'\] in "
                                         r"config.evals.knn; valid keys: \['ks', 'report_k', "
                                         r"'representation', 'type'\]"):
        checks.check_config(config)


class LogitsAreImages:
    """A stand-in classifier whose logits are the records' "image" vectors."""

    def apply(self, variables, images):
        return images, {}


def test_evaluator_wilds_metrics_are_those_of_the_gathered_predictions_without_padding():
    """13 hand-made records over 8 devices in batches of 8: the 3 padding rows repeat record 0,
    which would change both metrics if they were counted. Each record's logits are one-hot on
    the class before its prediction, so only the set whose logits transform shifts them by one
    class predicts `predicted`."""
    num_classes, other = 6, wilds.FMOW_REGIONS.index("Other")
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 5, 1, 0, 3])
    predicted = np.array([1, 0, 1, 2, 2, 2, 3, 0, 5, 4, 1, 0, 3])
    regions = np.array([0, 0, 1, 1, 3, 3, other, 2, 3, 1, 3, other, 2])
    unshifted = (predicted - 1) % num_classes
    records = [{"image": np.eye(num_classes, dtype=np.float32)[p], "label": np.int32(y),
                "region": np.int32(r)} for p, y, r in zip(unshifted, labels, regions)]
    keys = ("image", "label", pipeline.MASK_KEY)

    def eval_set(name, metrics=(), transform=None):
        fields = ("region",) if metrics else ()
        return tasks.EvalSet(name=name, kind="ood", source=records, num_classes=num_classes,
                             operations=(transforms.SelectKeys((*keys, *fields)),),
                             logits_transform=transform, metrics=metrics)

    task = tasks.Task(class_names=tuple(map(str, range(num_classes))), train_source=None,
                      train_operations=(), eval_worker_count=0, eval_sets=(
                          eval_set("f1", ("macro_f1",)),
                          eval_set("regions", ("worst_region_top1", "macro_f1"),
                                   functools.partial(jnp.roll, shift=1, axis=-1)),
                          eval_set("plain")))
    mesh = sharding.make_mesh(data=8)
    config = ml_collections.ConfigDict(dict(eval=dict(batch_size=8)))
    with jax.set_mesh(mesh):
        evaluator = zero_shot.Evaluator(built_context(
            config, task=task, models={"classifier": LogitsAreImages()}, mesh=mesh))
        values = {(r["dataset"], r["metric"]): r["value"]
                  for r in evaluator.run({}, method="m", alpha=0.0, seed=0)}
    expected = {
        ("f1", "top1"): np.mean(unshifted == labels), ("f1", "top5"): 1.0,
        ("f1", "macro_f1"): wilds.macro_f1(labels, unshifted),
        ("regions", "top1"): np.mean(predicted == labels), ("regions", "top5"): 1.0,
        ("regions", "worst_region_top1"): wilds.worst_region_accuracy(labels, predicted, regions),
        ("regions", "macro_f1"): wilds.macro_f1(labels, predicted),
        ("plain", "top1"): np.mean(unshifted == labels), ("plain", "top5"): 1.0,
    }
    assert values == pytest.approx(expected)
    labels, predicted, unshifted, regions = (np.concatenate([values, values[:1].repeat(3)])
                                             for values in (labels, predicted, unshifted, regions))
    assert wilds.macro_f1(labels, unshifted) != pytest.approx(expected["f1", "macro_f1"])
    assert wilds.worst_region_accuracy(labels, predicted, regions) != pytest.approx(
        expected["regions", "worst_region_top1"])


@pytest.mark.parametrize("task_name,id_metric,ood_metric", [
    ("iwildcam", "macro_f1", "macro_f1"), ("fmow", "top1", "worst_region_top1")])
def test_wilds_tasks_record_and_report_their_official_metrics(task_name, id_metric, ood_metric,
                                                              data_dir, hf_clip_dir, tmp_path):
    """The zero-shot model's records of the mocked WILDS sets (FMoW's region read through the
    eval pipeline) make the report that the task names: iWildCam by macro-F1, FMoW by top-1 ID
    and worst-region accuracy OOD, as main writes it."""
    config, task, _, models, _, classifier_params = built(task_name, data_dir, hf_clip_dir)
    assert evals.report_metric(config, "id") == id_metric
    assert evals.report_metric(config, "ood") == ood_metric
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    eval_config = ml_collections.ConfigDict(dict(eval=dict(batch_size=BATCH)))
    with jax.set_mesh(mesh):
        records = zero_shot.Evaluator(built_context(eval_config, task=task, models=models,
                                                    mesh=mesh)).run(
            classifier_params, method=experiment.ZERO_SHOT, alpha=0.0, seed=0)
    recorded = {(r["dataset"], r["metric"]) for r in records}
    for dataset in (config.data.id_domain, *config.data.ood_domains):
        assert {(dataset, "top1"), (dataset, tasks.dataset_splits(dataset).metrics[0])} <= recorded
    table = experiment.write_report(config, records, tmp_path, id_dataset=config.data.id_domain,
                                    ood_datasets=config.data.ood_domains)
    assert (f"[{ood_metric}]" in table) == (id_metric != ood_metric)
    assert f"# Robustness report: {id_metric}" in (tmp_path / "report.md").read_text()
    plot = "_".join(dict.fromkeys((id_metric, ood_metric)))
    assert (tmp_path / f"{plot}_vs_alpha.png").exists()
