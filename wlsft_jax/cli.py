"""The command lines' error handling (`wlsft_jax.main`, `launch/sweep.py`): a user error
(configuration, data, weights, workdir, a bucket that stopped answering) ends the program with
status 2 and one line saying what is wrong and what is valid, not a traceback; `--traceback` (or
WLSFT_TRACEBACK=1) shows it."""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import re
import sys
import threading
import time

# Before anything imports TensorFlow (clu's TensorBoard writer, tfds): its C++ INFO lines off,
# and its oneDNN notice (TensorFlow only writes events and reads datasets here; no TF math).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags  # noqa: E402 (after the environment)
from etils import epath  # noqa: E402

from wlsft_jax import storage, workdir  # noqa: E402

USAGE_ERROR_STATUS = 2
# ConnectionError: a gs:// endpoint that does not answer (`storage.check_bucket`,
# `storage.UnreachableError`).
USER_ERRORS = (ValueError, FileNotFoundError, ConnectionError, workdir.WorkdirBusyError)
_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "On an error, show the full traceback (also WLSFT_TRACEBACK=1).")


# Once a gs:// request gave up, the program has this long to end on its own (normally its
# error is reported at once); then, if the bucket still does not answer, it is stopped.
SECONDS_TO_END_AFTER_A_REQUEST_GAVE_UP = 30.0


def run(main, program: str) -> None:
    """`app.run(main)` with user errors reported as one line, "<program>: error: ...", and
    status 2; every gs:// client pointed at GCS or the emulator first (`storage.setup`)."""
    storage.setup()
    storage.when_a_request_gives_up(lambda error: _stop_if_stuck(program, error))
    exit_ = lambda message: exit_with_message(program, message)
    app.run(_with_clean_errors(main, exit_), flags_parser=lambda argv: parse_flags(argv, exit_))


def _stop_if_stuck(program: str, error: storage.UnreachableError) -> None:
    """Ends the process (status 2) if it still runs `SECONDS_TO_END_AFTER_A_REQUEST_GAVE_UP`
    after a gs:// request gave up while the bucket still does not answer: a library thread
    (orbax's) can go on with request after request, each retried for half a minute, and hold
    the program (even at exit, which waits for such threads). Says `error` unless an error was
    reported already. One watch at a time."""
    if _watching:
        return
    _watching.append(error)

    def watch():
        time.sleep(SECONDS_TO_END_AFTER_A_REQUEST_GAVE_UP)
        if storage.endpoint_answers():
            _watching.clear()  # It answers again: the program goes on, or ends by itself.
            return
        if not _reported:
            print(f"{program}: error: {error} (stopped: the bucket still does not answer)",
                  file=sys.stderr, flush=True)
        for worker in multiprocessing.active_children():  # grain's workers: none left behind.
            worker.kill()
        os._exit(USAGE_ERROR_STATUS)

    threading.Thread(target=watch, name="stop-if-stuck", daemon=True).start()


def _wants_traceback(argv=()) -> bool:
    if os.environ.get("WLSFT_TRACEBACK") or "--traceback" in argv:
        return True
    return flags.FLAGS.is_parsed() and _TRACEBACK.value


def _with_clean_errors(main, exit_):
    def wrapped(argv):
        try:
            return main(argv)
        except Exception as error:
            # A bucket that stopped answering: said by the first error that says so (a
            # clean-up's request may fail the same way after it).
            unreachable = storage.unreachable(error)
            if _wants_traceback() or not (unreachable or isinstance(error, USER_ERRORS)):
                raise
            exit_(f"{unreachable or error} (rerun with --traceback to see where it came from)")
    return wrapped


_reported = []  # Whether an error was printed (`exit_with_message`).
_watching = []  # The error a `_stop_if_stuck` watch is under way for.


def exit_with_message(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    _reported.append(message)
    # The error stays the last line: library threads still ending (a gs:// request giving up
    # at exit, its event loop closed under it) log and print nothing more.
    logging.disable(logging.CRITICAL)
    threading.excepthook = sys.unraisablehook = lambda *_: None
    sys.exit(USAGE_ERROR_STATUS)


def parse_flags(argv, exit_):
    """absl's flag parsing, with a missing config file or an unknown config override named as
    such (`exit_(message)`)."""
    try:
        parsed = flags.FLAGS(argv)
    except flags.Error as error:
        exit_(_without_traceback(str(error)))
    except Exception as error:  # ml_collections raises KeyError / AttributeError / OSError.
        if _wants_traceback(argv):
            raise
        try:
            message = config_override_problem(argv)
        except Exception:  # The config file itself fails: report the original error.
            message = None
        exit_(message or f"{type(error).__name__}: {error}")
    problem = config_file_problem(argv)
    if problem:
        exit_(problem)
    return parsed


def _without_traceback(message: str) -> str:
    """A flag error whose message embeds the traceback of a config file's `get_config` (as
    ml_collections reports a bad `--config=FILE:ARG`), cut to its first and last lines."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) > 2 and "Traceback (most recent call last)" in message:
        return f"{lines[0]} {lines[-1]}"
    return message


def config_path(argv) -> tuple[str, str] | None:
    """(file, argument) of `--config=FILE[:ARG]` in `argv`, if given."""
    value = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    return None if value is None else tuple(value.partition(":")[::2])


def config_file_problem(argv) -> str | None:
    """A message if `--config` names no file (ml_collections only fails later, at first use)."""
    path = config_path(argv)
    if path and not os.path.isfile(path[0]):
        shipped = sorted(p.name for p in epath.Path("configs").glob("*.py")) or ["configs/*.py"]
        return f"--config={path[0]}: no such config file; e.g. configs/ has {shipped}."
    return None


def config_override_problem(argv) -> str | None:
    """For a `--config.a.b=v` override naming a key the config file lacks: which part is
    unknown and the valid keys there (ml_collections says only KeyError / AttributeError)."""
    path, missing_file = config_path(argv), config_file_problem(argv)
    if path is None or missing_file:
        return missing_file
    from wlsft_jax import checks  # Only on this error path: it imports the whole package.

    spec = importlib.util.spec_from_file_location("_config_file", path[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(path[1]) if path[1] else module.get_config()
    for override in argv:
        match = re.fullmatch(r"--config\.([\w.]+)=.*", override)
        missing = match and checks.missing_key(config, match.group(1))
        if missing and missing[2]:  # A key below a leaf value is ml_collections' to report.
            key, where, valid = missing
            kind = "section" if where == "config" else "key"
            return f"{override}: unknown config {kind} {key!r} in {where}; valid: {valid}."
    return None
