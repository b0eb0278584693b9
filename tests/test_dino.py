"""DINO self-distillation: views, loss against a NumPy reference, momentum teacher, one stage."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metric_writers
from etils import epath

from wlsft_jax import (checks, context as context_lib, methods, objectives, optim, recipes,
                       sharding, train)
from wlsft_jax.methods import dino


def test_views_are_multi_crops_of_the_batch_normalised():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)), jnp.uint8)
    views = dino.views(images, jax.random.key(1), mean=(0.5,) * 3, std=(0.25,) * 3,
                       settings=dino.Settings())
    shapes = [v.shape for v in views]
    assert shapes == [(3, 32, 32, 3)] * dino.GLOBAL_VIEWS + [(3, 16, 16, 3)] * dino.LOCAL_VIEWS
    for view in views:  # Pixels stay in [0, 1] before normalisation.
        assert -2.0 - 1e-5 <= float(view.min()) and float(view.max()) <= 2.0 + 1e-5
    assert not np.allclose(views[0], views[1])  # Two different crops of each image.
    again = dino.views(images, jax.random.key(1), mean=(0.5,) * 3, std=(0.25,) * 3,
                       settings=dino.Settings())
    np.testing.assert_array_equal(views[3], again[3])


def test_loss_is_cross_entropy_of_centred_sharpened_teacher_over_pairs_of_other_views():
    rng = np.random.default_rng(0)
    settings = dino.Settings()
    student = rng.normal(size=(4, 5, 7)).astype(np.float32)  # 4 views, batch 5, 7 prototypes.
    teacher = rng.normal(size=(2, 5, 7)).astype(np.float32)
    center = rng.normal(size=(7,)).astype(np.float32)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    expected, pairs = 0.0, 0
    for g in range(2):
        target = softmax((teacher[g] - center) / settings.teacher_temperature)
        for v in range(4):
            if v == g:
                continue
            log_probs = np.log(softmax(student[v] / settings.student_temperature))
            expected += np.mean(-np.sum(target * log_probs, axis=-1))
            pairs += 1
    loss, batch_center = objectives.self_distillation(
        student, teacher, center, student_temperature=settings.student_temperature,
        teacher_temperature=settings.teacher_temperature)
    np.testing.assert_allclose(float(loss), expected / pairs, rtol=1e-5)
    np.testing.assert_allclose(batch_center, teacher.mean(axis=(0, 1)), rtol=1e-6)


def test_teacher_and_center_follow_by_momentum_on_a_cosine_schedule():
    settings = dino.Settings(teacher_momentum=0.9, center_momentum=0.5)
    assert float(dino.teacher_momentum(0, 10, settings)) == pytest.approx(0.9)
    assert float(dino.teacher_momentum(5, 10, settings)) == pytest.approx(0.95)
    assert float(dino.teacher_momentum(10, 10, settings)) == pytest.approx(1.0)
    params = {"student": {"w": jnp.full((2,), 3.0)}, "teacher": {"w": jnp.zeros((2,))},
              "center": jnp.array([2.0, 4.0])}
    updated = dino.momentum_update(params, jnp.array([0.0, 0.0]), 0, 10, settings)
    np.testing.assert_allclose(updated["teacher"]["w"], [0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(updated["center"], [1.0, 2.0])
    np.testing.assert_array_equal(updated["student"]["w"], params["student"]["w"])


def test_a_dino_stage_trains_the_student_and_moves_teacher_and_center_by_momentum(tmp_path):
    config = recipes.dino_base(stages=("dino",), dino=recipes.dino_stage(
        steps=3, batch_size=8, log_every=1, checkpoint_every=3, optim=dict(warmup_steps=1)))
    config.data = recipes.world_data(image_size=16, train_examples_per_domain=8, worker_count=0)
    config.model.img = dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2)
    checks.check_config(config)
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    context = context_lib.Context(config, workdir=epath.Path(tmp_path), mesh=mesh)
    method = methods.get("dino").build(context, "dino", config.dino).spec
    initial = jax.device_get(method.init_params(mesh, 0))
    jax.tree.map(np.testing.assert_array_equal, initial["teacher"], initial["student"])
    frozen = optim.frozen_mask(config.dino.optim, initial)
    assert all(jax.tree.leaves(frozen["teacher"])) and frozen["center"]
    assert not any(jax.tree.leaves(frozen["student"]))
    with jax.set_mesh(mesh):
        trained = jax.device_get(train.run(
            name="dino", stage_config=config.dino, spec=method, init_params=initial,
            mesh=mesh, workdir=epath.Path(tmp_path), seed=0,
            writer=metric_writers.LoggingWriter()))
    moved = lambda a, b: any(not np.array_equal(x, y) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(initial["student"], trained["student"])
    assert moved(initial["teacher"], trained["teacher"])  # By momentum: it gets no gradient.
    assert moved(trained["teacher"], trained["student"])
    assert not np.array_equal(initial["center"], trained["center"])


def test_a_dino_schedule_that_trains_the_teacher_is_refused():
    config = recipes.dino_base(stages=("dino",), dino=recipes.dino_stage(
        optim=dict(schedule=[(".*", {})])))
    with pytest.raises(ValueError, match="teacher"):
        checks.check_config(config)


def test_dino_settings_come_from_the_stage_and_a_misspelled_one_is_refused():
    config = recipes.dino_base(stages=("dino",), dino=recipes.dino_stage(
        settings=dict(teacher_temperature=0.07, global_scale=(0.5, 1.0))))
    checks.check_config(config)
    settings = dino.Settings.of_stage(config.dino)
    assert (settings.teacher_temperature, settings.global_scale) == (0.07, (0.5, 1.0))
    config.dino.settings.teacher_temprature = 0.05
    with pytest.raises(ValueError, match="teacher_temprature.*valid keys.*teacher_temperature"):
        checks.check_config(config)
