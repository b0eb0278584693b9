"""Tests for wlsft_jax.data.tokenizer: CLIP BPE (parity with transformers) and world tokenizer."""
import json

import numpy as np
import pytest
from tokenizers import models
import tokenizers

from wlsft_jax.data import templates
from wlsft_jax.data import tokenizer as tokenizer_lib
from helpers import byte_symbols, write_small_clip_files


TRICKY_TEXTS = [
    "A Photo Of A CAT.",
    "  leading and trailing spaces  ",
    "multiple     spaces\tand\nnew\n\nlines",
    "punctuation!!! ?? ... (brackets) [more]",
    "it's the dog's toy, isn't it? they'll've",
    "numbers 123 and 4.5 and 1,000",
    "Café naïve ÉCOLE — “quoted” text",
    "the photo of a cat " * 30,
    "",
]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    return write_small_clip_files(tmp_path_factory.mktemp("clip"))


def test_clip_bpe_matches_transformers(clip_files):
    transformers = pytest.importorskip(
        "transformers", reason="parity extra not installed: pip install -e .[parity]")
    vocab_json, merges_txt = clip_files
    ours = tokenizer_lib.clip_bpe(vocab_json, merges_txt)
    reference = transformers.CLIPTokenizer.from_pretrained(str(vocab_json.parent))
    tokens = ours.encode(TRICKY_TEXTS)
    assert tokens.shape == (len(TRICKY_TEXTS), 77) and tokens.dtype == np.int32
    for text, row in zip(TRICKY_TEXTS, tokens):
        expected = reference(text, truncation=True, max_length=77)["input_ids"]
        np.testing.assert_array_equal(row[:len(expected)], expected, err_msg=repr(text))
        assert not row[len(expected):].any(), f"padding of {text!r} is not all 0"
    # Multi-byte merges ("café") really got used: BPE is not falling back to single bytes.
    cafe = "".join(byte_symbols("café")) + "</w>"
    assert ours.encode(["café"])[0, 1] == json.loads(vocab_json.read_text())[cafe]


def test_clip_bpe_special_tokens_truncation_and_decode(clip_files):
    clip = tokenizer_lib.clip_bpe(*clip_files, context_length=8)
    vocab = json.loads(clip_files[0].read_text())
    assert clip.eot_id == vocab["<|endoftext|>"] == clip.vocab_size - 1
    assert clip.sot_id == vocab["<|startoftext|>"] and clip.pad_id == 0
    long_row, short_row = clip.encode(["the cat " * 10, "The   CAT"])
    assert long_row[0] == clip.sot_id and long_row[-1] == clip.eot_id  # end token survives.
    np.testing.assert_array_equal(short_row, [clip.sot_id, vocab["the</w>"], vocab["cat</w>"],
                                              clip.eot_id, 0, 0, 0, 0])
    roomy = tokenizer_lib.clip_bpe(*clip_files, context_length=32)
    assert roomy.decode(roomy.encode(["The  photo of a CAT, it's café!"])) == [
        "the photo of a cat , it 's café !"]


def test_world_tokenizer_round_trip_and_unknown_words():
    world = tokenizer_lib.world_tokenizer(["A red circle.", "a BLUE square on grass"],
                                          context_length=12)
    captions = ["A  red CIRCLE!", "a photo of a blue square.", "blue, red; square"]
    assert world.decode(world.encode(captions)) == [
        "a red circle", "a photo of a blue square", "blue red square"]
    unknown = world.encode(["a zebra"])[0]
    assert unknown[2] == 1 and world.decode(unknown[None]) == ["a <unk>"]
    assert world.encode(["a"]).max() == world.eot_id == world.vocab_size - 1
    assert world.sot_id == world.vocab_size - 2 and world.pad_id == 0
    # Every template word is in the vocabulary, so class prompts never hit <unk>.
    prompts = [t.format("circle") for t in templates.OPENAI_IMAGENET_TEMPLATES]
    assert not (world.encode(prompts) == 1).any()


def test_world_tokenizer_is_independent_of_text_order_and_truncates():
    texts = ["a red circle", "a blue square", "green triangle"]
    first = tokenizer_lib.world_tokenizer(texts, context_length=5)
    second = tokenizer_lib.world_tokenizer(texts[::-1] + texts, context_length=5)
    np.testing.assert_array_equal(first.encode(texts), second.encode(texts))
    row = first.encode(["a red circle a blue square"])[0]
    assert row.tolist()[0] == first.sot_id and row[-1] == first.eot_id and len(row) == 5
    assert first.decode(row[None]) == ["a red circle"]


def test_save_and_load_give_identical_ids(tmp_path, clip_files):
    world = tokenizer_lib.world_tokenizer(["a red circle", "a blue square"], context_length=9)
    clip = tokenizer_lib.clip_bpe(*clip_files, context_length=16)
    texts = ["a photo of a red circle.", "a zebra", "The cat's photo!!"]
    for name, tokenizer in (("world", world), ("clip", clip)):
        tokenizer.save(tmp_path / name)
        loaded = tokenizer_lib.Tokenizer.load(tmp_path / name)
        np.testing.assert_array_equal(loaded.encode(texts), tokenizer.encode(texts))
        assert (loaded.context_length, loaded.eot_id, loaded.pad_id, loaded.vocab_size) == (
            tokenizer.context_length, tokenizer.eot_id, tokenizer.pad_id, tokenizer.vocab_size)


def test_bad_input_raises_clear_errors(tmp_path):
    world = tokenizer_lib.world_tokenizer(["a red circle"], context_length=8)
    with pytest.raises(ValueError, match="single string"):
        world.encode("a red circle")
    with pytest.raises(ValueError, match="settings.json"):
        tokenizer_lib.Tokenizer.load(tmp_path)
    end_not_last = tokenizers.Tokenizer(models.WordLevel(
        {"<pad>": 0, "<|endoftext|>": 1, "<|startoftext|>": 2, "word": 3}, unk_token="<pad>"))
    with pytest.raises(ValueError, match="largest id"):
        tokenizer_lib.Tokenizer(end_not_last, context_length=8, pad_id=0)
    with pytest.raises(ValueError, match="single string"):
        tokenizer_lib.world_tokenizer("a red circle")
    with pytest.raises(ValueError, match=">= 2"):
        tokenizer_lib.world_tokenizer(["a"], context_length=1)
