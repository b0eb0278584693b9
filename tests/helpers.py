"""Helpers the test files share: the repository root, a config as the command line builds it,
and `wlsft_jax.main` run in the test process."""
import os
import sys

import jax
from absl import flags
from absl.testing import flagsaver
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path=os.path.join(REPO, "configs", "ft_clip.py"), *overrides):
    """The config of `path` as `--config=path --config.<key>=<value> ...` gives it."""
    argv = ["prog", f"--config={path}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def run_main_in_process(argv, monkeypatch):
    """`wlsft_jax.main` with `argv` in this process (8 CPU devices), flags and the mesh that
    main sets restored afterwards (a later test in this process may use another mesh)."""
    from wlsft_jax import main

    monkeypatch.setattr(sys, "argv", argv)  # The config flag reads its overrides from here.
    with flagsaver.flagsaver(), jax.set_mesh(None):
        try:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(argv)
            main.main(["main"])
        finally:
            flags.FLAGS.unparse_flags()
            flags.FLAGS.mark_as_parsed()
