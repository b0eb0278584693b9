r"""Chooses stage hyperparameters on the ID validation split (`wlsft_jax.tune` says how).

  python launch/tune.py --config=configs/compare_clip.py --workdir=workdir/tune_compare_clip \
      --grid=lp.optim.lr=1e-3,3e-3,1e-2 --grid=ft.optim.lr=1e-5,3e-5,1e-4,3e-4 \
      --grid=lpft.optim.lr=1e-5,3e-5,1e-4 --grid=flyp.optim.lr=1e-5,3e-5,1e-4,3e-4

Prints the overrides of the chosen points, e.g. `--config.ft.optim.lr=3e-05 ...`, to pass to
`python -m wlsft_jax.main`; `<workdir>/tuning.md` tabulates every point.
"""
from wlsft_jax import cli  # First: it quiets TensorFlow.

from absl import app, flags  # noqa: E402
from etils import epath  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wlsft_jax import main as main_lib, tune  # noqa: E402

_GRID = flags.DEFINE_multi_string(
    "grid", None, "<stage>.<key>=<value>,<value>,...: the values of one stage key to try "
    "(repeat the flag for more keys; the stage's points are their product).")
flags.mark_flags_as_required(["grid"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = main_lib.CONFIG.value
    grid = tune.parse_grid(_GRID.value, config)
    mesh = main_lib.prepare(config)
    config_name = config_flags.get_config_filename(flags.FLAGS["config"])
    workdir = epath.Path(main_lib.WORKDIR.value
                         or main_lib.default_workdir(config_name, prefix="tune_"))
    result = tune.run(config, grid, workdir=workdir, mesh=mesh)
    print((workdir / "tuning.md").read_text())
    print(tune.overrides(result))


if __name__ == "__main__":
    cli.run(main, "launch/tune.py")
