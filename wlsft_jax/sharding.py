"""Device mesh, logical-axis rules, batch placement and multi-host start-up.

Everything runs through JAX's own engine: a `Mesh` with axes ("data", "fsdp", "tensor"),
`NamedSharding`s derived from the logical axis names that the models attach to their params
(`nn.with_logical_partitioning`), and `jax.jit` with those shardings. Batches are split over
data x fsdp; params are split over fsdp on their model-width ("embed") dimension and over
tensor on their mlp/heads/vocab dimension, so no large tensor is replicated.
"""
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or axes, or None = replicated). Every logical name a model
# uses must be listed; `logical_shardings` rejects unknown names.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("joint", None),
    ("classes", None),
    ("length", None),
    ("layers", None),  # The stacked blocks of a scanned encoder (`vit.Model(scan=True)`).
)


def make_mesh(
    *, data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all).

    One axis may be -1: it takes the devices the other axes leave. Axes are `AxisType.Auto`, so
    Flax layers and `with_sharding_constraint` work under `jax.set_mesh(mesh)`.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    if any(size != -1 and size < 1 for size in sizes.values()):
        raise ValueError(f"Mesh axis sizes must be positive or -1 (fill the rest), got {sizes}.")
    fill_axes = [name for name, size in sizes.items() if size == -1]
    if len(fill_axes) > 1:
        raise ValueError(f"At most one mesh axis may be -1 (fill the rest), got {sizes}.")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if len(devices) % fixed or (not fill_axes and fixed != len(devices)):
        valid = [d for d in range(1, len(devices) + 1) if len(devices) % d == 0]
        raise ValueError(
            f"Mesh {sizes} does not fit {len(devices)} devices: the product of the axis sizes "
            f"must be {len(devices)} (or divide it when one axis is -1); valid axis sizes: {valid}."
        )
    if fill_axes:
        sizes[fill_axes[0]] = len(devices) // fixed
    return jax.make_mesh(
        tuple(sizes[name] for name in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def _check_logical_names(specs: Any, rules: Sequence[tuple[str, Any]]) -> None:
    known = {name for name, _ in rules}
    used = {
        name
        for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        for name in spec
        if name is not None
    }
    if unknown := used - known:
        raise ValueError(
            f"Logical axis names {sorted(unknown)} have no sharding rule; "
            f"known names: {sorted(known)}."
        )


def _fit_to_shape(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """Replicates every dimension whose size the mesh axes assigned to it do not divide."""
    fitted = []
    for dim_size, axes in zip(shape, sharding.spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        shards = math.prod(sharding.mesh.shape[name] for name in names)
        fitted.append(axes if dim_size % shards == 0 else None)
    return NamedSharding(sharding.mesh, PartitionSpec(*fitted))


def logical_shardings(
    mesh: Mesh, abstract_boxed_tree: Any, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES
) -> Any:
    """`NamedSharding`s for a `jax.eval_shape` of a Linen init whose leaves carry logical axes.

    The result has the structure of the unboxed tree (`nn.unbox`); leaves without logical axes
    are replicated, and a dimension the mesh cannot split evenly is replicated.
    """
    specs = nn.get_partition_spec(abstract_boxed_tree)
    _check_logical_names(specs, rules)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    return jax.tree.map(
        lambda sharding, leaf: _fit_to_shape(sharding, leaf.shape),
        shardings,
        nn.unbox(abstract_boxed_tree),
    )


def opt_state_shardings(
    tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any
) -> Any:
    """Shardings for `tx.init(params)`: state mirroring a param follows it; the rest is replicated.

    A state leaf belongs to a parameter when its tree path ends with that parameter's path and
    the shapes agree (as for Adam's `mu`/`nu`, momentum, or masked/multi-transform states).
    """
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {
        tuple(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree.leaves(param_shardings)
        )
    }

    def sharding_of(path, leaf):
        for start in range(len(path)):
            shape, sharding = by_path.get(tuple(path[start:]), (None, None))
            if shape == leaf.shape:
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(sharding_of, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_global_batch_size(mesh: Mesh, global_batch_size: int) -> None:
    """Raises ValueError unless the global batch splits evenly over the data shards; the
    message names the nearest valid sizes."""
    data_shards = math.prod(mesh.shape[name] for name in BATCH_AXES)
    if global_batch_size % data_shards:
        below = global_batch_size // data_shards * data_shards
        nearest = " or ".join(str(size) for size in (below, below + data_shards) if size)
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {data_shards} data "
            f"shards (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); "
            f"use a multiple of {data_shards}, e.g. {nearest}."
        )


def check_batch_sizes(mesh: Mesh, batch_sizes: Mapping[str, int]) -> None:
    """`check_global_batch_size` for each of `batch_sizes` ({what it is: global batch size}),
    the error prefixed by what: run before anything trains, so that no batch size (training
    micro-batches, evaluation batches) fails only once it is first used."""
    for what, batch_size in batch_sizes.items():
        try:
            check_global_batch_size(mesh, batch_size)
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None


def put_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global `jax.Array`s from this process's slice of the batch, split over data x fsdp."""
    sizes = {name: np.shape(value)[0] for name, value in local_batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Batch entries must share the leading (batch) size, got {sizes}.")
    check_global_batch_size(mesh, next(iter(sizes.values())) * jax.process_count())
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def host_copy(tree: Any) -> Any:
    """Numpy copies of a pytree's arrays, each whole on every process: an array sharded over
    other processes' devices is gathered (`process_allgather`), any other one read locally (as
    `jax.device_get` would, which fails on the former)."""

    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(copy, tree)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts `jax.distributed` unless it already runs; returns whether this call started it.

    Call it before any other JAX call, and only for multi-process runs: on Cloud TPU pods, SLURM
    and Kubernetes JAX detects all three values (call with none); elsewhere pass them.
    """
    if jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def mesh_from_config(config) -> Mesh:
    """The mesh of `config.mesh`, after joining the distributed runtime when
    `config.distributed.initialize` asks for it (the entry points' common start)."""
    settings = config.distributed
    if settings.initialize:
        maybe_initialize_distributed(coordinator_address=settings.coordinator_address,
                                     num_processes=settings.num_processes,
                                     process_id=settings.process_id)
    return make_mesh(**config.mesh)
