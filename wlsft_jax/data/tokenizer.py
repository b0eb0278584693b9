"""Text tokenizers built on the `tokenizers` library: CLIP's byte-level BPE and a word-level
tokenizer for the embedded world.

Both produce CLIP-style rows: start token, text, end token, then padding up to a fixed context
length; long texts are truncated so that the end token is always kept. The end token has the
largest id of the vocabulary, so a text tower can pool at `argmax(tokens)` as CLIP does.
"""
import itertools
import json
import os
from typing import Iterable, Sequence

from etils import epath
import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

from wlsft_jax.data import templates as templates_lib

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
WORLD_PAD_TOKEN = "<pad>"
WORLD_UNKNOWN_TOKEN = "<unk>"

_BACKEND_FILE = "tokenizer.json"
_SETTINGS_FILE = "settings.json"

# CLIP's pre-tokenization: common English contractions, runs of letters, single digits, and runs
# of other non-space characters are the pieces that BPE sees.
_CLIP_PIECES = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
_CLIP_WORD_SUFFIX = "</w>"
# The world tokenizer's words: runs of letters or digits; everything else separates words.
_WORLD_WORDS = r"[\p{L}\p{N}]+"


class Tokenizer:
    """Turns texts into fixed-length int32 token rows (and back) with a `tokenizers.Tokenizer`.

    The backend must hold `start_token` and `end_token` in its vocabulary (CLIP's by default; a
    BERT tokenizer's are [CLS] and [SEP]). CLIP's `END_TOKEN` must have the largest id, so a CLIP
    text tower can pool at argmax; BERT encoders pool over the padding mask instead.
    Special-token insertion, truncation and padding are configured here, so that every
    constructor (and `load`) gives the same behaviour.
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, context_length: int, pad_id: int,
                 start_token: str = START_TOKEN, end_token: str = END_TOKEN):
        vocab = backend.get_vocab(with_added_tokens=True)
        missing = [token for token in (start_token, end_token) if token not in vocab]
        if missing:
            raise ValueError(f"Tokenizer vocabulary lacks the special tokens {missing}; it needs "
                             f"both {[start_token, end_token]}.")
        if end_token == END_TOKEN and vocab[END_TOKEN] != max(vocab.values()):
            raise ValueError(f"{END_TOKEN} has id {vocab[END_TOKEN]} but must have the largest id "
                             f"({max(vocab.values())}) so the text tower can pool at argmax.")
        if context_length < 2:
            raise ValueError(f"context_length={context_length} leaves no room for the start and "
                             f"end tokens; use a value >= 2.")
        pad_token = backend.id_to_token(pad_id)
        if pad_token is None:
            raise ValueError(f"pad_id={pad_id} is not in the vocabulary (ids 0..{len(vocab) - 1}).")
        self._backend = backend
        self.context_length = context_length
        self.pad_id = pad_id
        self.start_token, self.end_token = start_token, end_token
        self.sot_id = vocab[start_token]
        self.eot_id = vocab[end_token]
        self.vocab_size = len(vocab)
        backend.add_special_tokens([start_token, end_token])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{start_token} $A {end_token}",
            special_tokens=[(start_token, self.sot_id), (end_token, self.eot_id)])
        # Truncation counts the two special tokens, so the end token always survives.
        backend.enable_truncation(max_length=context_length)
        backend.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns int32[len(texts), context_length] token rows."""
        if isinstance(texts, str):
            raise ValueError("encode takes a list of texts, got a single string; pass [text].")
        return np.array([encoding.ids for encoding in self._backend.encode_batch(list(texts))],
                        dtype=np.int32).reshape(len(texts), self.context_length)

    def decode(self, tokens: np.ndarray) -> list[str]:
        """Returns the texts of int[N, L] token rows (what lies between start and end token)."""
        texts = []
        for row in np.asarray(tokens).tolist():
            text_ids = row[1:row.index(self.eot_id)] if self.eot_id in row else row[1:]
            texts.append(self._backend.decode(text_ids, skip_special_tokens=True).strip())
        return texts

    def save(self, directory: str | os.PathLike) -> None:
        """Writes tokenizer.json and settings.json into `directory` (created if needed)."""
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _BACKEND_FILE).write_text(self._backend.to_str())
        settings = {"context_length": self.context_length, "pad_id": self.pad_id,
                    "start_token": self.start_token, "end_token": self.end_token}
        (directory / _SETTINGS_FILE).write_text(json.dumps(settings, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Reads a tokenizer written by `save`."""
        directory = epath.Path(directory)
        missing = [name for name in (_BACKEND_FILE, _SETTINGS_FILE)
                   if not (directory / name).exists()]
        if missing:
            raise ValueError(f"{directory} is not a saved tokenizer: missing {missing}; a saved "
                             f"tokenizer holds {[_BACKEND_FILE, _SETTINGS_FILE]}.")
        backend = tokenizers.Tokenizer.from_str((directory / _BACKEND_FILE).read_text())
        settings = json.loads((directory / _SETTINGS_FILE).read_text())
        return cls(backend, **settings)


def clip_bpe(vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, *,
             context_length: int = 77) -> Tokenizer:
    """CLIP's tokenizer from its vocab.json and merges.txt (local or gs:// paths).

    Like CLIP: whitespace runs collapse to one space, text is lower-cased, byte-level BPE with
    "</w>" ending each word, rows padded with id 0.
    """
    vocab = json.loads(epath.Path(vocab_json).read_text())
    merge_lines = epath.Path(merges_txt).read_text().splitlines()
    merges = [tuple(line.split()) for line in merge_lines
              if line.strip() and not line.startswith("#version")]
    malformed = [merge for merge in merges if len(merge) != 2]
    if malformed:
        raise ValueError(f"{merges_txt}: each merge line must hold two symbols separated by a "
                         f"space; malformed: {malformed[:3]}.")
    backend = tokenizers.Tokenizer(models.BPE(
        vocab=vocab, merges=merges, end_of_word_suffix=_CLIP_WORD_SUFFIX,
        continuing_subword_prefix=""))
    backend.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
        normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PIECES), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.Sequence([
        decoders.ByteLevel(), decoders.Replace(_CLIP_WORD_SUFFIX, " ")])
    return Tokenizer(backend, context_length=context_length, pad_id=0)


def from_tokenizer_json(path: str | os.PathLike, *, context_length: int,
                        start_token: str = "[CLS]", end_token: str = "[SEP]",
                        pad_token: str = "[PAD]") -> Tokenizer:
    """A Hugging Face `tokenizer.json` (e.g. a BERT WordPiece one, as all-MiniLM-L6-v2 ships),
    its own normaliser and pre-tokeniser kept; rows are start, text, end, `pad_token` padding."""
    backend = tokenizers.Tokenizer.from_str(epath.Path(path).read_text())
    pad_id = backend.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"{path} has no pad token {pad_token!r}; pass the pad_token of its "
                         "vocabulary.")
    return Tokenizer(backend, context_length=context_length, pad_id=pad_id,
                     start_token=start_token, end_token=end_token)


def _world_normalizer_and_splitter() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    """The world tokenizer's normaliser (lower case) and word splitter (letters/digits runs)."""
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    splitter = pre_tokenizers.Split(Regex(_WORLD_WORDS), behavior="removed", invert=True)
    return normalizer, splitter


_ALL_TEMPLATES = tuple(itertools.chain.from_iterable(templates_lib.TEMPLATES.values()))


def world_tokenizer(texts: Iterable[str], *, templates: Iterable[str] = _ALL_TEMPLATES,
                    context_length: int = 32) -> Tokenizer:
    """Word-level tokenizer whose vocabulary is every word of `texts` and `templates` (by
    default every template set of `templates.TEMPLATES`, so class prompts have no unknown words).

    Words are lower-cased runs of letters or digits; punctuation separates words and is dropped.
    Ids: 0 = <pad>, 1 = <unk> (any word outside the vocabulary), then the words in sorted order
    (so the ids do not depend on the order of `texts`), then start and end token.
    """
    if isinstance(texts, str):
        raise ValueError("world_tokenizer takes an iterable of texts, got a single string; "
                         "pass [text].")
    normalizer, splitter = _world_normalizer_and_splitter()
    words = set()
    for text in itertools.chain(texts, templates):
        if not isinstance(text, str):
            raise ValueError(f"world_tokenizer takes an iterable of strings, got {text!r}.")
        words.update(piece for piece, _ in splitter.pre_tokenize_str(
            normalizer.normalize_str(text)))
    ordered = [WORLD_PAD_TOKEN, WORLD_UNKNOWN_TOKEN, *sorted(words), START_TOKEN, END_TOKEN]
    backend = tokenizers.Tokenizer(models.WordLevel(
        vocab={token: index for index, token in enumerate(ordered)},
        unk_token=WORLD_UNKNOWN_TOKEN))
    backend.normalizer = normalizer
    backend.pre_tokenizer = splitter
    return Tokenizer(backend, context_length=context_length, pad_id=0)
