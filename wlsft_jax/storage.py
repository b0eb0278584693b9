"""gs:// paths, with one switch for every client: STORAGE_EMULATOR_HOST.

Without it, `gs://bucket/...` is Google Cloud Storage, reached with the machine's default
credentials (`gcloud auth application-default login`, or the VM's service account). With it
(e.g. `http://127.0.0.1:4443`, a fake-gcs-server), every gs:// access goes to that endpoint.
`setup()` points each client of the program at the same place; call it before the first gs://
access (`main.prepare` does; so does the tests' emulator fixture):

  - epath (workdir, config, reports, ledgers, orbax's directories and small files): gcsfs, the
    maintained fsspec GCS client, which honours STORAGE_EMULATOR_HOST. etils would otherwise use
    TensorFlow's gfile whenever TensorFlow is installed (it is: clu and tfds need it), and TF's
    GCS client has its endpoints compiled in (TF 2.21 reads no emulator variable, only GCS_*
    tuning knobs), so it could never be tested against an emulator.
  - tensorstore (orbax's arrays): TENSORSTORE_GCS_HTTP_URL.
  - TensorBoard events: clu writes them through TensorFlow's file system, so on gs:// they are
    written to a local folder and copied to the bucket (`create_writer`).

What is atomic on gs://: each object is written whole or not at all; the workdir LOCK is created
only if absent (an upload with the precondition ifGenerationMatch=0, `create_exclusive`); an
orbax step counts once its commit_success.txt, written last, exists. A folder's rename (a
checkpoint set aside) moves object by object, so a crash midway splits it; appending to a file
is a read and a rewrite (`append_text`). gcsfs caches no listings here (`setup`), so a file
that another process or host wrote is seen at once.

A bucket that stops answering: each client retries a request that could not connect, or got a
408, 429 or 5xx answer, 5 times, 1, 2, 4, 8 and 16 s apart (about half a minute): gcsfs on its
own fixed schedule (plus up to 1 s of jitter each), tensorstore on the same one
(`TENSORSTORE_GCS_RETRIES`, which `checkpoint` gives orbax; tensorstore's own would retry 32
times, up to 32 s apart). An outage that outlasts them ends the operation with one
`UnreachableError` naming it (`reporting`), not the clients' tracebacks; and since a library
may swallow that error or go on with more requests, each request that gcsfs gives up on is told
to `when_a_request_gives_up` (the command lines stop the program if it is still held 30 s later).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import time
import traceback
import urllib.parse

from etils import epath

EMULATOR_HOST = "STORAGE_EMULATOR_HOST"
GCS_ENDPOINT = "https://storage.googleapis.com"
# While a stage trains, its TensorBoard events reach the bucket at least this often.
UPLOAD_EVENTS_EVERY_SECONDS = 60.0
# tensorstore's `gcs_request_retries` context resource: gcsfs's schedule (module docstring).
TENSORSTORE_GCS_RETRIES = {"max_retries": 5, "initial_delay": "1s", "max_delay": "16s"}


class UnreachableError(ConnectionError):
    """A gs:// request still failed after its client's retries (module docstring)."""


def is_remote(path: epath.PathLike) -> bool:
    """Whether `path` is a URL (gs://...) rather than a local path."""
    return "://" in os.fspath(path)


def endpoint() -> str:
    """The URL that gs:// requests go to: the emulator's when STORAGE_EMULATOR_HOST is set."""
    host = os.environ.get(EMULATOR_HOST, "")
    if not host:
        return GCS_ENDPOINT
    return host if "://" in host else f"http://{host}"


def setup() -> None:
    """Points every gs:// client of this process (and of the processes it starts) at
    `endpoint()` (the module docstring). Idempotent."""
    import fsspec

    os.environ["EPATH_USE_TF"] = "false"  # etils: gs:// through gcsfs, not TensorFlow's gfile.
    # etils reads that variable once, at the first path of any kind (a local one included), and
    # keeps its answer: forget it, so a path made before this call does not pin gfile.
    from etils.epath import gpath

    if hasattr(gpath, "_is_tf_installed"):
        gpath._is_tf_installed.cache_clear()
    # gcsfs would answer `exists` from directory listings it made earlier, never expired: a
    # file that another process (host) wrote or removed since would be missed.
    gcsfs_options = dict(fsspec.config.conf.get("gcs", {}), use_listings_cache=False)
    fsspec.config.conf["gcs"] = gcsfs_options
    logging.getLogger("gcsfs").addFilter(_on_gcsfs_log)
    if not os.environ.get(EMULATOR_HOST):
        return
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = endpoint()
    # The emulator checks no credentials: tensorstore gets a fixed token instead of searching
    # for some (and logging an error when it finds none); gcsfs connects anonymously.
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"
    gcsfs_options["token"] = "anon"
    # gcsfs >= 2026 asks the Storage Control API (gRPC) for each bucket's layout, which an
    # emulator does not serve: each operation would log a warning and wait. Read on import.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


def _on_gcsfs_log(record: logging.LogRecord) -> bool:
    """gcsfs logs a request it gives up on with the traceback of the error it then raises (and
    that is reported, `reporting`): its line is enough. Such a request is also told to
    `when_a_request_gives_up`'s callbacks."""
    record.exc_info = record.exc_text = None
    if "out of retries" in record.getMessage():
        operation, path = _operations[-1] if _operations else ("reach the bucket", None)
        error = _unreachable_error(operation, path,
                                   record.getMessage().partition("exception: ")[2])
        for callback in _give_up_callbacks:
            callback(error)
    return True


# The `reporting` blocks entered, innermost last: (operation, path).
_operations: list[tuple[str, epath.PathLike | None]] = []
_give_up_callbacks: list = []


def when_a_request_gives_up(callback) -> None:
    """Calls `callback(UnreachableError naming the innermost operation under way)` each time
    gcsfs gives up on a request: a library may swallow that error, or go on with other requests
    that each retry for half a minute (`cli` bounds how long the program then lives)."""
    _give_up_callbacks.append(callback)


def _connection_error(timeout: float = 10.0) -> OSError | None:
    """Why a connection to `endpoint()` fails now (one try), or None if it succeeds."""
    parsed = urllib.parse.urlparse(endpoint())
    try:
        socket.create_connection(
            (parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)),
            timeout=timeout).close()
    except OSError as error:
        return error
    return None


def endpoint_answers() -> bool:
    """Whether `endpoint()` accepts a connection now (one try, 10 s at most)."""
    return _connection_error() is None


def _filesystem(path: epath.PathLike):
    """The gcsfs instance that epath uses for `path` (one session, one set of credentials)."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(path)


def bucket_of(path: epath.PathLike) -> str:
    """'bucket' of gs://bucket/some/path."""
    return urllib.parse.urlparse(os.fspath(path)).netloc


def _where() -> str:
    """The endpoint, and where it came from when it is the emulator's."""
    emulated = bool(os.environ.get(EMULATOR_HOST))
    return f"{endpoint()} (from {EMULATOR_HOST})" if emulated else endpoint()


def check_bucket(path: epath.PathLike, operation: str) -> None:
    """Raises an error naming the bucket, the endpoint and `operation` (e.g. "lock the workdir")
    when the bucket of a gs:// `path` cannot be reached or does not exist (a local path passes).
    Checked before the first request, as gcsfs retries an unreachable endpoint for about half a
    minute per request."""
    if not is_remote(path):
        return
    bucket, where, emulated = bucket_of(path), _where(), bool(os.environ.get(EMULATOR_HOST))
    error = _connection_error()
    if error is not None:
        remedy = (f"start the emulator there, or unset {EMULATOR_HOST} to use Google Cloud "
                  "Storage" if emulated else "check this machine's network")
        raise ConnectionError(f"Cannot {operation} on gs://{bucket}: nothing answers at {where} "
                              f"({error}); {remedy}.") from None
    try:
        _filesystem(path).info(bucket)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Cannot {operation}: bucket gs://{bucket} does not exist at {where}; create it "
            f"(gcloud storage buckets create gs://{bucket}) or name another in the path "
            f"{os.fspath(path)}.") from None


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or while handling, at any depth (both links:
    an error raised `from` another still keeps the one it was raised while handling)."""
    chain, todo = [], [error]
    while todo:
        error = todo.pop(0)
        if error is not None and all(error is not link for link in chain):
            chain.append(error)
            todo += [error.__cause__, error.__context__]
    return chain


def _retried_in_vain(error: BaseException) -> bool:
    """Whether `error` is a GCS client's last word on a request it retried (module docstring):
    one that gcsfs retries, raised through gcsfs (not, say, a download's from elsewhere), or
    tensorstore's "All N retry attempts failed"."""
    from gcsfs import retry

    through_gcsfs = any(f"{os.sep}gcsfs{os.sep}" in frame.filename
                        for frame in traceback.extract_tb(error.__traceback__))
    return ((through_gcsfs and retry.is_retriable(error))
            or bool(re.search(r"All \d+ retry attempts failed", str(error))))


def unreachable(error: BaseException, operation: str = "reach the bucket",
                path: epath.PathLike | None = None) -> UnreachableError | None:
    """The `UnreachableError` that `error` is or came from; else, if it came from a request
    that its client retried in vain, a new one: "Cannot <operation>: requests to <endpoint>
    still failed ..."; else None."""
    chain = _chain(error)
    found = next((link for link in chain if isinstance(link, UnreachableError)), None)
    failed = next((link for link in chain if _retried_in_vain(link)), None)
    if found or not failed:
        return found
    lines = str(failed).splitlines()
    return _unreachable_error(operation, path,
                              f"{type(failed).__name__}: {lines[0][:200] if lines else ''}")


def _unreachable_error(operation: str, path: epath.PathLike | None,
                       failure: str) -> UnreachableError:
    return UnreachableError(
        f"Cannot {operation}: requests to {_where()} still failed after about half a minute of "
        f"retries ({failure}); rerun the same command once "
        f"{f'gs://{bucket_of(path)}' if path else 'the bucket'} answers (a training run resumes "
        "from its last committed checkpoint).")


@contextlib.contextmanager
def reporting(operation: str, path: epath.PathLike):
    """Within it, a request to the bucket of gs:// `path` that its client retried in vain
    raises one `UnreachableError` naming `operation` (`unreachable`). One from within, a
    narrower operation's, passes unchanged."""
    _operations.append((operation, path))
    try:
        yield
    except Exception as error:
        clear = unreachable(error, operation, path) if is_remote(path) else None
        if clear is None or clear in _chain(error):
            raise
        raise clear from error
    finally:
        _operations.remove((operation, path))


def create_exclusive(path: epath.PathLike, text: str) -> bool:
    """Writes `text` to gs:// `path` unless the object exists; False if it did. One upload with
    the precondition ifGenerationMatch=0: of two concurrent calls, exactly one succeeds."""
    try:
        _filesystem(path).pipe_file(os.fspath(path), text.encode(), mode="create")
    except FileExistsError:
        return False
    return True


def generation(path: epath.PathLike) -> int:
    """The generation (version) of the gs:// object `path`; FileNotFoundError if there is none."""
    return int(_filesystem(path).info(os.fspath(path))["generation"])


def replace_if_generation(path: epath.PathLike, text: str, generation: int) -> bool:
    """Overwrites the gs:// object `path` with `text` if it is still at `generation`; False if
    it changed. One upload with the precondition ifGenerationMatch=<generation> (gcsfs uploads
    only with =0): of concurrent calls that read the same generation, exactly one succeeds."""
    filesystem = _filesystem(path)
    bucket, key, _ = filesystem.split_path(os.fspath(path))
    metadata = json.dumps({"name": key})
    body = (f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{metadata}\n"
            f"--==0==\nContent-Type: text/plain\n\n{text}\n--==0==--").encode()
    url = f"{endpoint()}/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o"
    try:  # The JSON API's multipart upload, as gcsfs makes it.
        filesystem.call("POST", url, uploadType="multipart", ifGenerationMatch=str(generation),
                        data=body, headers={"Content-Type": 'multipart/related; boundary="==0=="'})
    except FileExistsError:  # gcsfs's name for 412, the precondition failed.
        return False
    return True


def append_text(path: epath.Path, text: str) -> None:
    """Appends `text` to the file `path` (created if absent). On gs://, whose objects cannot be
    appended to (gcsfs would silently overwrite), the object is read and rewritten: right only
    while one process writes it (the workdir's lock holder)."""
    if not is_remote(path):
        with path.open("a") as file:
            file.write(text)
        return
    path.write_text((path.read_text() if path.exists() else "") + text)


def create_writer(logdir: epath.Path, *, just_logging: bool = False):
    """clu's default writer: log lines, and TensorBoard events in `logdir` (local or gs://).
    On gs:// the events go to a local folder and are copied to `logdir` (module docstring)."""
    from clu import metric_writers  # Here: it imports TensorFlow, which `--help` does not need.

    if just_logging or not is_remote(logdir):
        return metric_writers.create_default_writer(os.fspath(logdir),
                                                    just_logging=just_logging)
    return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(),
                                            UploadingSummaryWriter(logdir)])


class UploadingSummaryWriter:
    """clu's TensorBoard writer into a local folder whose events files are copied to the gs://
    folder `remote` on `flush` and `close`, and at least every UPLOAD_EVENTS_EVERY_SECONDS while
    scalars are written (so TensorBoard reading the bucket follows a long stage). Events written
    since the last copy are lost if the process is killed, as TensorFlow's buffered writer loses
    its buffer."""

    def __init__(self, remote: epath.Path):
        from clu import metric_writers

        self._local = epath.Path(tempfile.mkdtemp(prefix="wlsft_tensorboard_"))
        self._remote = remote
        self._writer = metric_writers.SummaryWriter(os.fspath(self._local))
        self._uploaded_at = time.monotonic()

    def __getattr__(self, name):  # write_images, write_texts, ...: clu's writer's own.
        return getattr(self._writer, name)

    def write_scalars(self, step, scalars):
        self._writer.write_scalars(step, scalars)
        if time.monotonic() - self._uploaded_at > UPLOAD_EVENTS_EVERY_SECONDS:
            self.flush()

    def flush(self):
        self._writer.flush()
        self._upload()

    def close(self):
        self._writer.close()
        self._upload()
        self._local.rmtree()

    def _upload(self):
        for events in self._local.iterdir():
            (self._remote / events.name).write_bytes(events.read_bytes())
        self._uploaded_at = time.monotonic()
