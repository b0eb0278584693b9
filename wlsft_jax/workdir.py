"""A workdir belongs to one run and one config.

`claim(workdir, config)` (a context manager) is what `main` does before any work:
  - **Lock.** It creates `<workdir>/LOCK` if absent (atomically: O_EXCL on a local disk, an
    upload with a does-not-exist precondition on gs://) holding the holder's host, pid and
    start time; a second run on a busy workdir stops with `WorkdirBusyError` naming the holder.
    A lock left by a dead process on this host is taken over with a warning (of several starts
    taking it over at once one wins: on gs:// by an upload preconditioned on the generation
    read, locally under an flock on the workdir); one from another host is only named (this
    host cannot tell whether it lives), with the command that removes it. The lock is released
    on exit, unless the bucket became unreachable (`storage.UnreachableError`): a rerun on this
    host then takes it over. On gs:// the bucket is checked first (`storage`).
  - **Config drift.** `config.json` records the config the workdir was made with and is never
    overwritten: a rerun whose config differs in any key that changes results stops with
    `ConfigDriftError` listing the keys (`OUTCOME_NEUTRAL_KEYS` may differ: logging and
    checkpoint cadence, evaluation batch size and periodic evaluation, the mesh, the multi-host
    settings). Every start appends its config, time and command line to
    `config_history.jsonl`.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import socket
import sys
import threading

from absl import logging
from etils import epath

from wlsft_jax import storage

LOCK = "LOCK"
CONFIG = "config.json"
HISTORY = "config_history.jsonl"
# Dotted config keys (regexes, full match) whose value cannot change what a run computes.
OUTCOME_NEUTRAL_KEYS = (r"[^.]+\.log_every", r"[^.]+\.checkpoint_every",
                        r"[^.]+\.keep_checkpoints", r"[^.]+\.eval_every", r"eval\.batch_size",
                        r"eval\.periodic_examples",
                        r"mesh\..*", r"distributed\..*")


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir."""


class ConfigDriftError(ValueError):
    """The workdir was made with a config that differs in keys that change results."""


def _holder() -> dict:
    return dict(host=socket.gethostname(), pid=os.getpid(),
                started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, owned by another user.
        return True
    return True


def _create_exclusive(path: epath.Path, text: str) -> bool:
    """Creates `path` with `text` unless it exists; False if it did. Atomic: of two starts in
    the same instant, one creates it (O_EXCL locally, a precondition on gs://)."""
    if storage.is_remote(path):
        return storage.create_exclusive(path, text)
    try:
        descriptor = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return True


def _take_over(path: epath.Path, text: str, seen: str, generation: int | None) -> bool:
    """Replaces the lock `path` of a dead process, which read `seen` (at `generation` on gs://),
    with `text`; False if another start replaced it first. On gs:// one upload preconditioned on
    that generation. On a local disk the starts replace it one at a time, each holding an flock
    on the workdir (the kernel drops it with its holder), and only while it still reads `seen`."""
    if storage.is_remote(path):
        return storage.replace_if_generation(path, text, generation)
    directory = os.open(os.fspath(path.parent), os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        try:
            if path.read_text() != seen:
                return False
        except FileNotFoundError:
            return False  # Released in between: the caller tries to create it again.
        replacement = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        replacement.write_text(text)
        os.replace(replacement, path)
        return True
    finally:
        os.close(directory)  # Releases the flock.


def acquire_lock(workdir: epath.Path) -> dict:
    """Takes `<workdir>/LOCK` (see the module docstring); returns what it wrote."""
    path = workdir / LOCK
    holder = _holder()
    for _ in range(3):
        if _create_exclusive(path, json.dumps(holder)):
            return holder
        try:  # The generation first: the text read is of it or newer (then the take-over fails).
            generation = storage.generation(path) if storage.is_remote(path) else None
            seen = path.read_text()
            other = json.loads(seen)
        except (FileNotFoundError, json.JSONDecodeError):
            continue  # Released, or being written, in between: try again.
        if other.get("host") == holder["host"] and not _is_alive(int(other.get("pid", -1))):
            logging.warning("Taking over %s left by process %s (started %s), which is gone.",
                            path, other.get("pid"), other.get("started"))
            if _take_over(path, json.dumps(holder), seen, generation):
                return holder
            continue
        remove = "gcloud storage rm" if storage.is_remote(path) else "rm"
        raise WorkdirBusyError(
            f"{workdir} is in use by process {other.get('pid')} on host {other.get('host')} "
            f"(started {other.get('started')}); wait for it, use another --workdir, or, if that "
            f"run is gone, remove the lock: {remove} {path}")
    raise WorkdirBusyError(f"Could not take {path}: it keeps changing; is another run starting?")


def release_lock(workdir: epath.Path, holder: dict) -> None:
    """Removes `<workdir>/LOCK` if this process still holds it."""
    path = workdir / LOCK
    try:
        if json.loads(path.read_text()) == holder:
            path.unlink()
    except (FileNotFoundError, json.JSONDecodeError):
        pass


def drift(recorded: dict, current: dict) -> list[str]:
    """'key: recorded -> current' for each key that differs and may change results."""
    from flax import traverse_util  # Here: `--help` imports this module, and no jax.

    old, new = (traverse_util.flatten_dict(tree, sep=".") for tree in (recorded, current))
    neutral = re.compile("|".join(f"(?:{key})" for key in OUTCOME_NEUTRAL_KEYS))
    return [f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
            for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and not neutral.fullmatch(key)]


def record_config(workdir: epath.Path, config) -> None:
    """Writes config.json on the first start; later starts must match it (`drift`). Appends
    the start to config_history.jsonl either way."""
    current = json.loads(config.to_json_best_effort())
    path = workdir / CONFIG
    if path.exists():
        differences = drift(json.loads(path.read_text()), current)
        if differences:
            raise ConfigDriftError(
                f"{workdir} was made with another config; these keys differ (recorded -> "
                f"now): {'; '.join(differences)}. Rerun with the recorded values (see {path}) "
                "or use a new --workdir.")
    else:
        path.write_text(json.dumps(current, indent=2))
    entry = dict(_holder(), argv=sys.argv, config=current)
    storage.append_text(workdir / HISTORY, json.dumps(entry) + "\n")


@contextlib.contextmanager
def claim(workdir: epath.Path, config, *, is_main_process: bool = True):
    """Holds the workdir's lock and checks / records its config for the duration (the module
    docstring). Only the main process of a multi-host run locks and records."""
    if not is_main_process:
        yield
        return
    storage.check_bucket(workdir, "lock the workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    holder = acquire_lock(workdir)
    try:
        with storage.reporting(f"use the workdir {workdir}", workdir):
            record_config(workdir, config)
            yield
    except storage.UnreachableError:
        raise  # Releasing the lock would retry in vain.
    except BaseException:
        release_lock(workdir, holder)
        raise
    release_lock(workdir, holder)
