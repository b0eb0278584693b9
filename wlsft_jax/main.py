r"""Runs one experiment: stages of training, then ID / OOD evaluation.

  python -m wlsft_jax.main --config=configs/flyp_clip.py [--workdir=./workdir/flyp_clip]
  python -m wlsft_jax.main --config=configs/ft_clip.py --config.ft.optim.lr=3e-5

The config names the stages (e.g. pretrain -> flyp); each stage trains through `train.run` in
`<workdir>/<stage>/` and resumes there after an interruption: rerun the same command. A workdir
belongs to one run at a time and to the config it was made with (`wlsft_jax.workdir`).

A configuration, data, weights or workdir error ends the program with status 2 and one message
(`wlsft_jax.cli`); a new workdir that a failed start created is removed.
"""
from __future__ import annotations

import logging as python_logging
import os

from wlsft_jax import cli, storage, workdir as workdir_lib  # cli first: it quiets TensorFlow.

from absl import app, flags, logging  # noqa: E402, I100
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. configs/flyp_clip.py[:arg].", lock_config=True)
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, TensorBoard logs and the report go (local or gs://). "
    "Default: ./workdir/<config name>[_<arg>].")
flags.mark_flags_as_required(["config"])


def default_workdir(config_flag_value: str, prefix: str = "") -> str:
    """./workdir/flyp_clip for configs/flyp_clip.py, ./workdir/flyp_clip_imagenet for :imagenet
    (./workdir/<prefix>flyp_clip with a prefix)."""
    path, _, arg = config_flag_value.partition(":")
    name = prefix + os.path.splitext(os.path.basename(path))[0]
    return os.path.join("workdir", f"{name}_{arg}" if arg else name)


class _QuietLibraries:
    """Logging filter: other libraries' INFO lines (orbax logs dozens per save) drown the
    progress log; keep this package's and clu's (progress, metrics) and every warning."""

    def filter(self, record):
        return (record.levelno >= python_logging.WARNING
                or any(part in record.pathname for part in ("/wlsft_jax/", "/clu/")))


def prepare(config):
    """What every command does before it reads data: library INFO lines off (unless
    --verbosity=1), the config and its names checked, the mesh made current and every batch
    size checked against it; returns the mesh."""
    # absl's handler passes records straight to its python_handler, so filter there (once, as
    # tests call main repeatedly); --verbosity=1 shows every library's INFO lines.
    handler = logging.get_absl_handler().python_handler
    if logging.get_verbosity() < 1 and not any(isinstance(f, _QuietLibraries)
                                               for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    # Imports after flag parsing so `--help` stays fast.
    import jax

    from wlsft_jax import checks, experiment, methods, sharding

    checks.check_config(config)
    experiment.check_names(config)
    mesh = sharding.mesh_from_config(config)
    # Every training micro-batch and every evaluation batch (k-NN's feature bank too) is split
    # over the data shards: all are checked before anything trains.
    batch_sizes = {f"config.{name}: micro-batches of batch_size={config[name].batch_size} / "
                   f"accum_steps={config[name].accum_steps}":
                   config[name].batch_size // config[name].accum_steps
                   for name in config.stages if methods.trains_by_loop(config[name].method)}
    batch_sizes[f"config.eval.batch_size={config.eval.batch_size} (evaluation and k-NN "
                "batches)"] = config.eval.batch_size
    sharding.check_batch_sizes(mesh, batch_sizes)
    jax.set_mesh(mesh)
    return mesh


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = CONFIG.value
    mesh = prepare(config)
    import jax

    from wlsft_jax import experiment

    workdir = epath.Path(WORKDIR.value
                         or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"])))
    is_main_process = jax.process_index() == 0
    storage.check_bucket(workdir, "use the workdir")  # One clear error, not retries.
    is_new = not workdir.exists()
    try:
        with workdir_lib.claim(workdir, config, is_main_process=is_main_process):
            writer = storage.create_writer(workdir / "tensorboard",
                                           just_logging=not is_main_process)
            logging.info("Workdir %s; mesh %s over %d devices.", workdir, dict(mesh.shape),
                         jax.device_count())
            records = experiment.run(config, workdir=workdir, mesh=mesh, writer=writer)
            if is_main_process:
                table = experiment.write_report(config, records, workdir / "report",
                                                id_dataset=config.data.id_domain,
                                                ood_datasets=config.data.ood_domains,
                                                writer=writer)
                print(table)
            writer.close()
    # The workdir is another run's, or its bucket stopped answering (a look inside would only
    # retry in vain): leave it be.
    except (workdir_lib.WorkdirBusyError, storage.UnreachableError):
        raise
    except Exception:
        if is_new and is_main_process and not _holds_checkpoints(workdir):
            workdir.rmtree(missing_ok=True)
        raise


def _holds_checkpoints(workdir) -> bool:
    """Whether any stage of `workdir` (`<stage>/<step>`, `<stage>/seed<s>/<step>`) committed a
    checkpoint (orbax's per-step metadata)."""
    return workdir.exists() and any(any(workdir.glob(pattern)) for pattern in (
        "*/*/_CHECKPOINT_METADATA", "*/seed*/*/_CHECKPOINT_METADATA"))


if __name__ == "__main__":
    cli.run(main, "wlsft_jax.main")
