"""Checkpoints: bitwise roundtrip, other meshes, retention, data position, partial writes."""
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from wlsft_jax import checkpoint, sharding


def _dense(features, names):
    kernel_init = nn.with_logical_partitioning(nn.initializers.normal(), names)
    return nn.Dense(features, kernel_init=kernel_init)


class TinyMlp(nn.Module):
    """Two Dense layers whose kernels carry logical axes, so they shard over fsdp."""

    @nn.compact
    def __call__(self, x):
        return _dense(8, ("mlp", "embed"))(nn.relu(_dense(16, ("embed", "mlp"))(x)))


MODEL, INPUTS, TX = TinyMlp(), jnp.ones((4, 8)), optax.adam(1e-2)


def _init_and_step(key):
    """A real {params, opt_state, step, rng}: init, then one Adam step."""
    params = nn.unbox(MODEL.init(key, INPUTS))
    grads = jax.grad(lambda p: MODEL.apply(p, INPUTS).sum())(params)
    updates, opt_state = TX.update(grads, TX.init(params), params)
    return dict(params=optax.apply_updates(params, updates), opt_state=opt_state,
                step=jnp.int32(1), rng=jax.random.split(key)[0])


def _state_shardings(mesh):
    abstract = jax.eval_shape(MODEL.init, jax.random.key(0), INPUTS)
    param_shardings = sharding.logical_shardings(mesh, abstract)
    replicated = NamedSharding(mesh, P())
    return dict(params=param_shardings,
                opt_state=sharding.opt_state_shardings(TX, nn.unbox(abstract), param_shardings),
                step=replicated, rng=replicated)


def _restore_target(mesh):
    shapes = jax.eval_shape(_init_and_step, jax.random.key(0))
    return checkpoint.restore_target(shapes, _state_shardings(mesh))


@pytest.fixture(scope="module")
def fsdp_state():
    """A training state on an 8-way fsdp mesh and its restore target."""
    mesh = sharding.make_mesh(data=1, fsdp=8)
    state = jax.jit(_init_and_step, out_shardings=_state_shardings(mesh))(jax.random.key(0))
    return state, _restore_target(mesh)


def _assert_bitwise_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        if jax.dtypes.issubdtype(e.dtype, jax.dtypes.prng_key):
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_roundtrip_is_bitwise_and_keeps_shardings(tmp_path, fsdp_state):
    state, target = fsdp_state
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, state, metadata={"stage": "ft", "config": {"lr": 0.1}})
        ckpt.wait_until_finished()
        restored = ckpt.restore(1, target)
        assert ckpt.metadata(1) == {"stage": "ft", "config": {"lr": 0.1}}
    _assert_bitwise_equal(restored, state)
    kernel = restored["params"]["params"]["Dense_0"]["kernel"]
    assert kernel.sharding == state["params"]["params"]["Dense_0"]["kernel"].sharding
    assert kernel.sharding.spec == P("tensor", "fsdp")


@pytest.mark.parametrize("mesh_shape", [dict(data=1, fsdp=1, tensor=1), dict(data=2, fsdp=4)])
def test_restore_onto_another_mesh(tmp_path, fsdp_state, mesh_shape):
    state, _ = fsdp_state
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state)
    devices = jax.devices()[: np.prod(list(mesh_shape.values()))]
    other_mesh = sharding.make_mesh(**mesh_shape, devices=devices)
    other_target = _restore_target(other_mesh)
    restored = checkpoint.Checkpointer(tmp_path).restore(3, other_target)
    _assert_bitwise_equal(restored, state)
    for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(other_target)):
        assert leaf.sharding == target.sharding
        assert leaf.sharding.mesh.devices.size == len(devices)


def test_keeps_last_n_saves_every_k_and_forced_final_step(tmp_path, fsdp_state):
    state, _ = fsdp_state
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=3) as ckpt:
        saved = [step for step in range(1, 11) if ckpt.save(step, state)]
        assert ckpt.save(11, state, force=True)
        assert not ckpt.save(11, state, force=True)  # already saved
    assert saved == [3, 6, 9]
    reopened = checkpoint.Checkpointer(tmp_path)
    assert reopened.all_steps() == [9, 11]
    assert reopened.latest_step() == 11


def test_unknown_step_is_rejected_with_saved_steps(tmp_path, fsdp_state):
    state, target = fsdp_state
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state)
    with pytest.raises(ValueError, match=r"step 5 .*saved steps: \[2\]"):
        checkpoint.Checkpointer(tmp_path).restore(5, target)


def test_half_written_checkpoint_is_ignored(tmp_path, fsdp_state):
    state, target = fsdp_state
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(4, state)
    # What a save interrupted mid-write leaves behind: an uncommitted temporary step directory.
    (tmp_path / "8.orbax-checkpoint-tmp-1234567" / checkpoint.STATE).mkdir(parents=True)
    reopened = checkpoint.Checkpointer(tmp_path)
    assert reopened.latest_step() == 4
    _assert_bitwise_equal(reopened.restore(4, target), state)


def _range_loader(seed):
    source = grain.sources.RangeDataSource(0, 100, 1)
    sampler = grain.samplers.IndexSampler(len(source), shuffle=True, seed=seed, num_epochs=None)
    batch = grain.transforms.Batch(4, drop_remainder=True)
    return grain.DataLoader(data_source=source, sampler=sampler, operations=[batch],
                            worker_count=0)


@pytest.mark.parametrize("make_iterator", [
    lambda: iter(_range_loader(seed=7)),
    lambda: iter(grain.MapDataset.range(100).shuffle(seed=7).repeat().batch(4).to_iter_dataset()),
], ids=["DataLoader", "Dataset"])
def test_data_iterator_resumes_at_saved_position(tmp_path, fsdp_state, make_iterator):
    state, target = fsdp_state
    iterator = make_iterator()
    for _ in range(3):
        next(iterator)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, data_iterator=iterator)
        expected = [next(iterator) for _ in range(4)]  # training goes on while the save runs.
    resumed = make_iterator()
    restored = checkpoint.Checkpointer(tmp_path).restore(3, target, data_iterator=resumed)
    _assert_bitwise_equal(restored, state)
    for batch in expected:
        np.testing.assert_array_equal(next(resumed), batch)
