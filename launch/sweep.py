r"""Sweeps checkpoints × WiSE-FT alphas × datasets into one robustness report, resumably
(`wlsft_jax.sweep` says what a cell is, how checkpoints are named and what --out holds).

  python launch/sweep.py --config=configs/flyp_clip.py:imagenet \
      --pretrained=/path/to/clip-vit-base-patch16 \
      --checkpoints='gs://bucket/runs/*/flyp,gs://bucket/runs/*/ft' \
      --alphas=0,0.5,1 --datasets=imagenet2012,imagenet_r,imagenet_sketch \
      --out=gs://bucket/sweeps/imagenet

  # The embedded world: every seed of every fine-tuning stage of configs/compare_clip.py.
  w=workdir/compare_clip
  python launch/sweep.py --config=configs/compare_clip.py --pretrained=$w/pretrain/seed0 \
      --checkpoints="$w/lp/seed*,$w/ft/seed*,$w/lpft/seed*,$w/flyp/seed*" \
      --alphas=0,0.5,1 --out=workdir/compare_clip_sweep
"""
from wlsft_jax import cli  # First: it quiets TensorFlow.

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wlsft_jax import sharding, sweep  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config giving the data, model, tokenizer and eval settings, "
    "e.g. configs/flyp_clip.py[:arg]; --config.<key>=<value> overrides.", lock_config=True)
_CHECKPOINTS = flags.DEFINE_list(
    "checkpoints", None, "Checkpoint directories or globs, comma-separated, local or gs://: "
    "orbax stage directories of earlier runs (e.g. 'gs://bucket/runs/*/flyp') or Hugging Face "
    "CLIP directories.")
_ALPHAS = flags.DEFINE_list("alphas", None, "WiSE-FT alphas in [0, 1], e.g. 0,0.5,1 (default: "
                            "the config's eval.alphas).")
_DATASETS = flags.DEFINE_list("datasets", None, "Eval sets of the config to score, among its ID "
                              "and OOD sets; keep the ID set (default: all).")
_PRETRAINED = flags.DEFINE_string(
    "pretrained", None, "The pretrained CLIP (alpha 0): an orbax stage directory or a Hugging "
    "Face CLIP directory (default: the config's init).")
_ALLOW_OTHER_PRETRAINED = flags.DEFINE_bool(
    "allow_other_pretrained", False, "Mix checkpoints whose recorded initial image tower is not "
    "--pretrained's (refused by default).")
_OUT = flags.DEFINE_string("out", None, "Where results.json, failures.json and report/ go "
                           "(local or gs://); rerunning into it skips the finished cells.")
flags.mark_flags_as_required(["config", "checkpoints", "out"])


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    plan = sweep.plan(_CONFIG.value, checkpoints=_CHECKPOINTS.value, alphas=_ALPHAS.value,
                      datasets=_DATASETS.value, pretrained=_PRETRAINED.value,
                      allow_other_pretrained=_ALLOW_OTHER_PRETRAINED.value)
    mesh = sharding.mesh_from_config(plan.config)
    batch_size = plan.config.eval.batch_size
    sharding.check_batch_sizes(mesh, {f"config.eval.batch_size={batch_size}": batch_size})
    jax.set_mesh(mesh)
    outcome = sweep.run(plan, out=_OUT.value, mesh=mesh)
    if outcome.failures:
        logging.error("%d cell(s) failed, listed in %s/failures.json; rerun the same command to "
                      "retry them.", len(outcome.failures), _OUT.value)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main, "launch/sweep.py")
