"""Checkpoints of a training run with orbax: save, keep the last few, resume, restore on any mesh.

Each checkpoint step holds three items:
  - "state":    the training state pytree, e.g. {params, opt_state, step, rng} (jax.Arrays);
  - "data":     the grain iterator position, one JSON file per process;
  - "metadata": a small JSON dict (config, stage, ...).
`provenance` is that metadata for a training stage: what its params started from, with a
content hash of the image tower (`tree_sha256`), so a sweep can refuse to mix a checkpoint with
a pretrained model it was not fine-tuned from. Saves run in the background. A save cut short
(crash, preemption) is never taken for a checkpoint: on a local disk orbax writes each step into
a temporary directory and renames it at the end; on GCS (`gs://...`, see `wlsft_jax.storage`),
which has no atomic rename, it writes the step in place and a commit_success.txt last, and a
step without one is not listed. A save that a bucket unreachable for longer than the clients'
retries cuts short raises `storage.UnreachableError` naming the step.
"""
import hashlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint._src.serialization import tensorstore_utils
from orbax.checkpoint.checkpoint_managers import save_decision_policy as save_policies

from wlsft_jax import storage

STATE, DATA, METADATA = "state", "data", "metadata"

# orbax makes every tensorstore context from these two dicts (it has no option for it): bound
# tensorstore's GCS retries as gcsfs's are (`storage`).
for _defaults in (tensorstore_utils._BASE_TS_CONTEXT,
                  tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
    _defaults["gcs_request_retries"] = storage.TENSORSTORE_GCS_RETRIES


def restore_target(shapes: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `shapes` (e.g. `jax.eval_shape` output) placed on `shardings`."""
    return jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
        shapes,
        shardings,
    )


def tree_sha256(tree: Any) -> str | None:
    """sha256 of a params pytree: every leaf's path, dtype, shape and bytes, in path order.
    None when a leaf spans other processes (a pod), which this process cannot read whole."""
    leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(tree))
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for _, leaf in leaves):
        return None
    digest = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def provenance(stage: str, init_source: str, init_params: Any) -> dict[str, Any]:
    """The metadata a training stage saves with each checkpoint: its name, what its params
    started from, and the sha256 of its initial image tower ("img"; None without one)."""
    image_tower = init_params.get("img") if isinstance(init_params, Mapping) else None
    return dict(stage=stage, init=init_source,
                init_img_sha256=None if image_tower is None else tree_sha256(image_tower))


def error_line(error: BaseException, limit: int = 200) -> str:
    """"Type: first line of the message" (orbax and tensorstore errors run to many lines)."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:limit] if lines else ''}"


class Checkpointer:
    """An orbax `CheckpointManager` for the state, data position and metadata of one run.

    Use as a context manager (or call `close`) so the last background save completes before exit.
    """

    def __init__(
        self,
        directory: epath.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
    ):
        if save_interval_steps < 1:
            raise ValueError(
                f"save_interval_steps must be a positive number of steps, "
                f"got {save_interval_steps}."
            )
        path = epath.Path(directory)
        if not storage.is_remote(directory):
            path = path.absolute()
        self._manager = ocp.CheckpointManager(
            path,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                # Every K-th step and on preemption (TPU maintenance); no unasked first save.
                save_decision_policy=save_policies.AnySavePolicy([
                    save_policies.FixedIntervalPolicy(save_interval_steps),
                    save_policies.PreemptionCheckpointingPolicy(),
                ]),
                enable_async_checkpointing=async_save,
            ),
            item_names=(STATE, DATA, METADATA),
        )
        self._saving = None  # The step of the last save started.

    @property
    def directory(self) -> epath.Path:
        return self._manager.directory

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iterator: grain.DataLoaderIterator | grain.DatasetIterator | None = None,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts saving at `step` if due (every `save_interval_steps`, on preemption, or `force`).

        Returns whether it started a save; a step already saved is not saved again. The data
        iterator's position is recorded before this returns, so training may go on at once.
        """
        if step in self._manager.all_steps():
            return False
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        if metadata is not None:
            items[METADATA] = ocp.args.JsonSave(dict(metadata))
        self.wait_until_finished()  # As orbax would, but naming the step if that save failed.
        with self._reporting(step):
            started = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        if started:
            self._saving = step
        return started

    def all_steps(self) -> list[int]:
        """Steps of all checkpoints, ascending (see `latest_step`)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest checkpoint's step, or None if there is none.

        On opening a directory only committed checkpoints count; afterwards this process's own
        saves count as soon as they start (`restore` waits for them to complete).
        """
        return self._manager.latest_step()

    def _check_step(self, step: int) -> None:
        if step not in self._manager.all_steps():
            raise ValueError(
                f"No checkpoint at step {step} in {self.directory}; "
                f"saved steps: {self.all_steps()}."
            )

    def restore(
        self,
        step: int,
        abstract_state: Any,
        data_iterator: grain.DataLoaderIterator | grain.DatasetIterator | None = None,
    ) -> Any:
        """The state saved at `step`, laid out as `abstract_state` says (see `restore_target`).

        The shardings in `abstract_state` may use any mesh, not only the one that saved. When
        `data_iterator` is given it is moved to the saved position, in place.
        """
        self._check_step(step)
        self.wait_until_finished()
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the params saved at `step` (no optimizer state), laid out as `abstract_params`.

        For starting a new run from a finished one (`init.format="orbax"`) and for sweeps.
        """
        self._check_step(step)
        item = {"params": abstract_params}
        args = ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)
        return self._manager.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE][
            "params"]

    def param_names(self, step: int) -> list[str]:
        """The top-level names of the params saved at `step`, read from the checkpoint's
        metadata (no arrays): a sweep tells a CLIP ({img, txt, ...}) from a classifier."""
        self._check_step(step)
        self.wait_until_finished()
        # Step directories are named by the bare step number (the manager sets no prefix).
        tree = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / STATE)
        return sorted(tree["params"])

    def metadata(self, step: int) -> dict[str, Any]:
        """The metadata dict saved at `step`."""
        self._check_step(step)
        self.wait_until_finished()
        items = {METADATA: ocp.args.JsonRestore()}
        return self._manager.restore(step, args=ocp.args.Composite(**items))[METADATA]

    def set_aside(self, step: int) -> epath.Path:
        """Moves the checkpoint of `step` out of the run, to `<step>.corrupt` beside it (kept for
        inspection, never restored); returns where it went."""
        self.wait_until_finished()
        source = self.directory / str(step)
        target = self.directory / f"{step}.corrupt"
        suffix = 1
        while target.exists():
            target, suffix = self.directory / f"{step}.corrupt{suffix}", suffix + 1
        source.rename(target)
        self._manager.reload()
        return target

    def _reporting(self, step: int):
        return storage.reporting(f"save checkpoint step {step} to {self.directory / str(step)}",
                                 self.directory)

    def wait_until_finished(self) -> None:
        """Blocks until the background save in flight (if any) is complete."""
        with self._reporting(self._saving):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Completes pending saves and releases the manager."""
        self.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def check_provenance(paths, pretrained_img_sha256, pretrained_description) -> None:
    """ValueError listing the orbax stage directories among `paths` whose recorded initial
    image tower (`provenance`) is not the given pretrained one (a sweep mixes each with it);
    checkpoints saved without provenance are logged, not refused."""
    mismatches = []
    for path in paths:
        with Checkpointer(path) as manager:
            step = manager.latest_step()
            try:
                recorded = (manager.metadata(step) if step is not None else None) or {}
            except Exception:  # Saved before provenance was recorded.
                recorded = {}
        recorded_sha256 = recorded.get("init_img_sha256")
        if recorded_sha256 is None:
            logging.warning("%s records no initial image tower; it is mixed with %s unchecked.",
                            path, pretrained_description)
        elif pretrained_img_sha256 and recorded_sha256 != pretrained_img_sha256:
            mismatches.append(f"{path} (started from {recorded.get('init')!r}, image tower "
                              f"sha256 {recorded_sha256[:12]})")
    if mismatches:
        raise ValueError(
            f"{len(mismatches)} checkpoint(s) were not fine-tuned from the sweep's pretrained "
            f"model {pretrained_description!r} (image tower sha256 "
            f"{pretrained_img_sha256[:12]}): {'; '.join(mismatches)}. Pass the model they "
            "started from as --pretrained, or --allow_other_pretrained to mix them anyway.")
