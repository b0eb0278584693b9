"""Mesh construction and the placement of params, optimizer state and batches."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from wlsft_jax import sharding
from wlsft_jax.models import vit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _partitioned(names, init=nn.initializers.lecun_normal()):
    return nn.with_logical_partitioning(init, names)


class TinyMlp(nn.Module):
    """Two Dense layers with logical axes, plus a width-6 scale that 4 fsdp shards cannot split."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(64, kernel_init=_partitioned(("embed", "mlp")),
                     bias_init=_partitioned(("mlp",), nn.initializers.zeros))(x)
        x = nn.Dense(32, kernel_init=_partitioned(("mlp", "embed")),
                     bias_init=_partitioned(("embed",), nn.initializers.zeros))(nn.gelu(h))
        odd = self.param("odd_scale", _partitioned(("embed",), nn.initializers.ones), (6,))
        plain = self.param("plain", nn.initializers.zeros, (4, 4))
        return x.sum() * odd.sum() + plain.sum()


def _tiny_abstract():
    model = TinyMlp()
    inputs = jnp.zeros((2, 32))
    return model, inputs, jax.eval_shape(model.init, jax.random.key(0), inputs)


def test_make_mesh_fills_data_axis_with_remaining_devices():
    mesh = sharding.make_mesh(fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    filled_fsdp = sharding.make_mesh(data=1, fsdp=-1, tensor=2)
    assert dict(filled_fsdp.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    single = sharding.make_mesh(devices=jax.devices()[:1])
    assert dict(single.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
    "sizes", [dict(fsdp=3), dict(data=2, fsdp=2, tensor=1), dict(data=-1, fsdp=-1)])
def test_make_mesh_rejects_sizes_that_do_not_fit(sizes):
    with pytest.raises(ValueError, match="8 devices|At most one"):
        sharding.make_mesh(**sizes)


def test_make_mesh_rejects_nonpositive_sizes():
    with pytest.raises(ValueError, match="positive or -1"):
        sharding.make_mesh(data=0)


def test_init_lands_sharded_by_logical_axes():
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    model, inputs, abstract = _tiny_abstract()
    shardings = sharding.logical_shardings(mesh, abstract)
    init = jax.jit(lambda key: nn.unbox(model.init(key, inputs)), out_shardings=shardings)
    params = init(jax.random.key(0))["params"]

    expected_specs = {
        ("Dense_0", "kernel"): P("fsdp", "tensor"),
        ("Dense_0", "bias"): P("tensor"),
        ("Dense_1", "kernel"): P("tensor", "fsdp"),
        ("Dense_1", "bias"): P("fsdp"),
        ("odd_scale",): P(None),  # 6 is not divisible by 4 fsdp shards: replicated.
        ("plain",): P(),  # no logical axes: replicated.
    }
    for path, spec in expected_specs.items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, path
    assert params["Dense_0"]["kernel"].addressable_shards[0].data.shape == (8, 32)
    reference = nn.unbox(model.init(jax.random.key(0), inputs))["params"]
    jax.tree.map(np.testing.assert_array_equal, params, reference)


def test_unknown_logical_name_is_rejected():
    abstract = {"w": nn.Partitioned(jax.ShapeDtypeStruct((8,), jnp.float32), names=("widht",))}
    with pytest.raises(ValueError, match=r"\['widht'\].*embed"):
        sharding.logical_shardings(sharding.make_mesh(fsdp=8), abstract)


def test_opt_state_follows_params_and_scalars_are_replicated():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    _, _, abstract = _tiny_abstract()
    param_shardings = sharding.logical_shardings(mesh, abstract)["params"]
    abstract_params = nn.unbox(abstract)["params"]
    # Freeze Dense_1 as the optimizer config does (no state), Adam on the rest.
    labels = {name: "frozen" if name == "Dense_1" else "train" for name in abstract_params}
    tx = optax.multi_transform({"train": optax.adamw(1e-3), "frozen": optax.set_to_zero()}, labels)

    state_shardings = sharding.opt_state_shardings(tx, abstract_params, param_shardings)
    params = jax.jit(lambda p: p, out_shardings=param_shardings)(
        jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract_params))
    opt_state = jax.jit(tx.init, out_shardings=state_shardings)(params)

    adam_state = opt_state.inner_states["train"].inner_state[0]
    assert adam_state.mu["Dense_0"]["kernel"].sharding == params["Dense_0"]["kernel"].sharding
    assert adam_state.nu["Dense_0"]["bias"].sharding == params["Dense_0"]["bias"].sharding
    assert adam_state.mu["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert adam_state.count.sharding.spec == P()
    assert isinstance(adam_state.mu["Dense_1"], optax.MaskedNode)


@pytest.mark.parametrize("variant, width", [("B/16", 768), ("L/14", 1024)])
def test_vit_params_fully_sharded_over_fsdp(variant, width):
    mesh = sharding.make_mesh(data=1, fsdp=8)
    model = vit.Model(variant=variant)
    images = jnp.zeros((1, 224, 224, 3), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), images)
    shardings = jax.tree.leaves(sharding.logical_shardings(mesh, abstract))
    leaves = jax.tree.leaves(nn.unbox(abstract))
    limit = 4 * 2**20
    total = per_device = 0
    for leaf, leaf_sharding in zip(leaves, shardings):
        size = leaf.size * leaf.dtype.itemsize
        shard_size = np.prod(leaf_sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        total, per_device = total + size, per_device + shard_size
        if leaf_sharding.is_fully_replicated:
            assert size <= limit, (leaf.shape, leaf_sharding)
    assert per_device < 1.05 * total / 8, (per_device, total)
    assert any(leaf.shape[-1] == width for leaf in leaves)


def test_put_batch_splits_leading_axis_over_data_and_fsdp():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "label": np.arange(16)}
    placed = sharding.put_batch(mesh, batch)
    assert placed["image"].sharding == sharding.batch_sharding(mesh)
    assert placed["image"].sharding.spec == P(("data", "fsdp"))
    for shard in placed["label"].addressable_shards:
        assert shard.data.shape == (2,)
        np.testing.assert_array_equal(shard.data, batch["label"][shard.index])
    np.testing.assert_array_equal(placed["image"], batch["image"])


def test_put_batch_rejects_batch_not_divisible_by_data_shards():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    with pytest.raises(ValueError, match="Global batch size 12 .* 8 data shards"):
        sharding.put_batch(mesh, {"label": np.arange(12)})
    with pytest.raises(ValueError, match="leading"):
        sharding.put_batch(mesh, {"label": np.arange(8), "image": np.zeros((16, 2))})


_TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from wlsft_jax import sharding
    process_id, port = int(sys.argv[1]), sys.argv[2]
    started = sharding.maybe_initialize_distributed(f"localhost:{port}", 2, process_id)
    again = sharding.maybe_initialize_distributed(f"localhost:{port}", 2, process_id)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    placed = sharding.put_batch(mesh, {"x": np.arange(4) + 4 * process_id})
    shards = {s.index[0].start: s.data.tolist() for s in placed["x"].addressable_shards}
    print(json.dumps(dict(started=started, again=again, processes=jax.process_count(),
                          shape=placed["x"].shape, shards=shards)))
""")


def test_two_processes_build_one_global_batch():
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    workers = [
        subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(pid), str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for pid in range(2)
    ]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for pid, result in enumerate(results):
        assert (result["started"], result["again"], result["processes"]) == (True, False, 2)
        assert result["shape"] == [8]
        assert result["shards"] == {str(4 * pid + i): [4 * pid + i] for i in range(4)}
