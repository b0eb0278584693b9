"""Checkpoint converters: HF CLIP / HF ViT (DINO) / big_vision npz <-> our params, no torch."""
from wlsft_jax.convert.big_vision import from_big_vision, to_big_vision_npz
from wlsft_jax.convert.bert import from_hf_bert
from wlsft_jax.convert.hf import from_hf_clip, from_hf_vit, to_hf_clip
