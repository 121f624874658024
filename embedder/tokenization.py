"""The model's Rust tokenizer (tokenizer.json), read directly: no transformers import.

Two `tokenizers.Tokenizer` objects are loaded and neither is changed after loading, so any
number of threads may call them at once (a Tokenizer's truncation and padding are shared
state: changing them while another thread encodes corrupts that thread's batch):
the plain one, exposed as `Encoder.tokenizer`, neither truncates nor pads; the batch one
truncates to `max_seq_len` and pads each batch to its longest text.
"""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embedder.errors import ModelNotFoundError

# Tokens a model pads with when its files do not say, by vocabulary convention.
PAD_TOKEN_GUESSES = ("[PAD]", "<pad>")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_plain_tokenizer(model_path: Path) -> Tokenizer:
    """The model's tokenizer with truncation and padding off (tokenizer.json's own removed)."""
    source = model_path / "tokenizer.json"
    if not source.is_file():
        raise ModelNotFoundError(
            f"{model_path} has no tokenizer.json; the encoder needs a fast (Rust) tokenizer file"
        )
    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _pad_token(model_path: Path, tokenizer: Tokenizer) -> tuple[str, int]:
    """The padding token and its id, from the model's tokenizer config."""
    candidates: list[str] = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = _read_json(model_path / name).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            candidates.append(token)
    for token in (*candidates, *PAD_TOKEN_GUESSES):
        identifier = tokenizer.token_to_id(token)
        if identifier is not None:
            return token, identifier
    raise ModelNotFoundError(f"{model_path}: no padding token found in its tokenizer files")


def model_max_length(model_path: Path) -> int:
    """The longest input the model accepts: its own sentence-transformers limit if it has one."""
    limits = []
    tokenizer_limit = _read_json(model_path / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_limit, int | float) and 0 < tokenizer_limit < 100_000:
        limits.append(int(tokenizer_limit))
    sentence_limit = _read_json(model_path / "sentence_bert_config.json").get("max_seq_length")
    if sentence_limit:
        limits.append(int(sentence_limit))
    return min(limits) if limits else 512


class BatchTokenizer:
    """Texts to padded (input_ids, attention_mask) int64 arrays, cut to `max_seq_len` tokens."""

    def __init__(self, model_path: Path, max_seq_len: int) -> None:
        tokenizer = load_plain_tokenizer(model_path)
        pad_token, pad_id = _pad_token(model_path, tokenizer)
        tokenizer.enable_truncation(max_length=max_seq_len)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (len(texts), longest) int64."""
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        return ids, mask
