r"""Fits an effective-robustness testbed (`wlsft_jax.testbed`) from a testbed run's report.

  python -m wlsft_jax.main --config=configs/testbed_world.py
  python launch/fit_testbed.py --results=workdir/testbed_world/report/results.json \
      --out=wlsft_jax/data/testbeds/world.json

Every (method, alpha) row of the results is one model of the testbed; the ID dataset is the
records' only ID dataset, the OOD datasets all of theirs. Prints the fitted line.
"""
import json

from wlsft_jax import cli  # First: it quiets TensorFlow.

from absl import app, flags  # noqa: E402
from etils import epath  # noqa: E402

from wlsft_jax import records as records_lib, testbed  # noqa: E402

_RESULTS = flags.DEFINE_string("results", None, "A testbed run's report/results.json.")
_OUT = flags.DEFINE_string("out", None, "Where the testbed JSON goes (local or gs://).")
_METRIC = flags.DEFINE_string("metric", "top1", "The metric of the ID and OOD points.")
_COMMAND = flags.DEFINE_string(
    "command", "python -m wlsft_jax.main --config=configs/testbed_world.py",
    "The command that trained the testbed, recorded in the file.")
flags.mark_flags_as_required(["results", "out"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    records = records_lib.load_records(_RESULTS.value)
    ids = sorted({r["dataset"] for r in records if r["kind"] == "id"})
    if len(ids) != 1:
        raise ValueError(f"{_RESULTS.value} has ID datasets {ids}; a testbed has exactly one.")
    fitted = testbed.fit(records, id_dataset=ids[0], metric=_METRIC.value)
    out = epath.Path(_OUT.value)
    out.write_text(json.dumps(dict(name=out.stem, **fitted, command=_COMMAND.value), indent=1)
                   + "\n")
    print(records_lib.BaselineLine(fitted["slope"], fitted["intercept"]))


if __name__ == "__main__":
    cli.run(main, "launch/fit_testbed.py")
