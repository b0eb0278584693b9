"""Test-wide setup: 8 fake CPU devices (before jax is imported) and absl flags parsed."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

# grain's worker processes and absl logging read flags; parse them once for the tests.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
