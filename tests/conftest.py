"""Test-wide setup: 8 fake CPU devices (before jax is imported), absl flags parsed, and the
fixtures that several test files use."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import flags  # noqa: E402

from helpers import NUM_MOCK_EXAMPLES  # noqa: E402

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
