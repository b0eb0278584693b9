"""wlsft_jax: robust fine-tuning of pretrained vision encoders in JAX/Flax."""
