r"""Runs one experiment: stages of training, then ID / OOD evaluation.

  python -m wlsft_jax.main --config=configs/flyp_clip.py [--workdir=./workdir/flyp_clip]
  python -m wlsft_jax.main --config=configs/ft_clip.py --config.ft.optim.lr=3e-5

The config names the stages (e.g. pretrain -> flyp); each stage trains through `train.run` in
`<workdir>/<stage>/` and resumes there after an interruption: rerun the same command. A workdir
belongs to one run at a time and to the config it was made with (`wlsft_jax.workdir`).

A configuration, data, weights or workdir error ends the program with status 2 and one message
(`--traceback`, or WLSFT_TRACEBACK=1, shows where it came from); a new workdir that a failed
start created is removed.
"""
from __future__ import annotations

import importlib.util
import logging as python_logging
import os
import re
import sys

# Before anything imports TensorFlow (clu's TensorBoard writer, tfds): its C++ INFO lines off,
# and its oneDNN notice (TensorFlow only writes events and reads datasets here; no TF math).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from wlsft_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. configs/flyp_clip.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, TensorBoard logs and the report go (local or gs://). "
    "Default: ./workdir/<config name>[_<arg>].")
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "On an error, show the full traceback (also WLSFT_TRACEBACK=1).")
flags.mark_flags_as_required(["config"])
USAGE_ERROR_STATUS = 2


def default_workdir(config_flag_value: str) -> str:
    """./workdir/flyp_clip for configs/flyp_clip.py, ./workdir/flyp_clip_imagenet for :imagenet."""
    path, _, arg = config_flag_value.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("workdir", f"{name}_{arg}" if arg else name)


class _QuietLibraries:
    """Logging filter: other libraries' INFO lines (orbax logs dozens per save) drown the
    progress log; keep this package's and clu's (progress, metrics) and every warning."""

    def filter(self, record):
        return (record.levelno >= python_logging.WARNING
                or any(part in record.pathname for part in ("/wlsft_jax/", "/clu/")))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if logging.get_verbosity() < 1:  # --verbosity=1 shows every library's INFO lines.
        # absl's handler passes records straight to its python_handler, so filter there.
        logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
    # Imports after flag parsing so `--help` stays fast.
    import jax
    from clu import metric_writers

    from wlsft_jax import checks, experiment, sharding

    config = _CONFIG.value
    checks.check_config(config)
    experiment.check_names(config)
    mesh = sharding.mesh_from_config(config)
    # Every training micro-batch and every evaluation batch (k-NN's feature bank too) is split
    # over the data shards: all are checked before anything trains.
    batch_sizes = {f"config.{name}: micro-batches of batch_size={config[name].batch_size} / "
                   f"accum_steps={config[name].accum_steps}":
                   config[name].batch_size // config[name].accum_steps for name in config.stages}
    batch_sizes[f"config.eval.batch_size={config.eval.batch_size} (evaluation and k-NN "
                "batches)"] = config.eval.batch_size
    sharding.check_batch_sizes(mesh, batch_sizes)
    jax.set_mesh(mesh)

    workdir = epath.Path(_WORKDIR.value
                         or default_workdir(config_flags.get_config_filename(flags.FLAGS["config"])))
    is_main_process = jax.process_index() == 0
    is_new = not workdir.exists()
    try:
        with workdir_lib.claim(workdir, config, is_main_process=is_main_process):
            writer = metric_writers.create_default_writer(
                os.fspath(workdir / "tensorboard"), just_logging=not is_main_process)
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
    except Exception:
        if is_new and is_main_process and not _holds_checkpoints(workdir):
            workdir.rmtree(missing_ok=True)
        raise


def _holds_checkpoints(workdir) -> bool:
    """Whether any stage of `workdir` (`<stage>/<step>`, `<stage>/seed<s>/<step>`) committed a
    checkpoint (orbax's per-step metadata)."""
    return workdir.exists() and any(any(workdir.glob(pattern)) for pattern in (
        "*/*/_CHECKPOINT_METADATA", "*/seed*/*/_CHECKPOINT_METADATA"))


def _config_path(argv) -> tuple[str, str] | None:
    """(file, argument) of `--config=FILE[:ARG]` in `argv`, if given."""
    value = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    return None if value is None else tuple(value.partition(":")[::2])


def _config_file_problem(argv) -> str | None:
    """A message if `--config` names no file (ml_collections only fails later, at first use)."""
    path = _config_path(argv)
    if path and not os.path.isfile(path[0]):
        shipped = sorted(p.name for p in epath.Path("configs").glob("*.py")) or ["configs/*.py"]
        return f"--config={path[0]}: no such config file; e.g. configs/ has {shipped}."
    return None


def _config_override_problem(argv) -> str | None:
    """For a `--config.a.b=v` override naming a key the config file lacks: which part is
    unknown and the valid keys there (ml_collections says only KeyError / AttributeError)."""
    path = _config_path(argv)
    if path is None or _config_file_problem(argv):
        return _config_file_problem(argv)
    spec = importlib.util.spec_from_file_location("_config_file", path[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(path[1]) if path[1] else module.get_config()
    for override in argv:
        match = re.fullmatch(r"--config\.([\w.]+)=.*", override)
        node, where = config, "config"
        for key in (match.group(1).split(".") if match else ()):
            if not hasattr(node, "keys"):
                break
            if key not in node:
                kind = "section" if where == "config" else "key"
                return (f"{override}: unknown config {kind} {key!r} in {where}; valid: "
                        f"{sorted(node.keys())}.")
            node, where = node[key], f"{where}.{key}"
    return None


def _parse_flags(argv):
    """absl's flag parsing, with a missing config file or an unknown config override named as
    such (status 2)."""
    try:
        parsed = flags.FLAGS(argv)
    except flags.Error as error:
        _exit_with_message(str(error))
    except Exception as error:  # ml_collections raises KeyError / AttributeError / OSError.
        if "--traceback" in argv or os.environ.get("WLSFT_TRACEBACK"):
            raise
        try:
            message = _config_override_problem(argv)
        except Exception:  # The config file itself fails: report the original error.
            message = None
        _exit_with_message(message or f"{type(error).__name__}: {error}")
    problem = _config_file_problem(argv)
    if problem:
        _exit_with_message(problem)
    return parsed


def _exit_with_message(message):
    print(f"wlsft_jax.main: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR_STATUS)


def _main_with_clean_errors(argv):
    """`main`, with a user error (config, data, weights, workdir) as one message, status 2."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, workdir_lib.WorkdirBusyError) as error:
        if _TRACEBACK.value or os.environ.get("WLSFT_TRACEBACK"):
            raise
        _exit_with_message(f"{error} (rerun with --traceback to see where it came from)")


if __name__ == "__main__":
    app.run(_main_with_clean_errors, flags_parser=_parse_flags)
