"""Tokenizers for the UMT5 text encoder, behind one interface.

`load_tokenizer(spec)`:
  "byte"                        `ByteTokenizer`: UTF-8 bytes, for demo configs without a vocabulary.
  a tokenizer.json (or its dir) `HuggingFaceTokenizer`: the `tokenizers` library on the file, as
                                transformers' T5TokenizerFast (the reference's tokenizer) runs it.
  a SentencePiece *.model       `SentencePieceTokenizer`: like transformers' T5 tokenizer on spiece.model.
Every tokenizer has `encode_batch(prompts, max_length) -> (ids int32 [B, L], mask int32 [B, L])`
(EOS appended, truncation keeps the EOS, right padding with `pad_id`), `pad_id`, `eos_id` and
`vocab_size`. Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np


class TokenizerNotFoundError(FileNotFoundError, ValueError):
  """A tokenizer path does not exist or holds no tokenizer file."""


def _check_batch(prompts: Sequence[str], max_length: int) -> list[str]:
  if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"encode_batch: prompts must be a sequence of strings, got {prompts!r}")
  if not isinstance(max_length, (int, np.integer)) or max_length < 1:
    raise ValueError(f"encode_batch: max_length must be a positive int, got {max_length!r}")
  return list(prompts)


def _pad_with_eos(token_lists: Sequence[Sequence[int]], max_length: int, eos_id: int,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Truncates each list to max_length - 1, appends EOS and right-pads: T5's batching."""
  ids = np.full((len(token_lists), max_length), pad_id, np.int32)
  mask = np.zeros((len(token_lists), max_length), np.int32)
  for row, tokens in enumerate(token_lists):
    tokens = list(tokens[:max_length - 1]) + [eos_id]
    ids[row, :len(tokens)] = tokens
    mask[row, :len(tokens)] = 1
  return ids, mask


class ByteTokenizer:
  """UTF-8 bytes offset by 3 after the T5 specials: pad 0, EOS 1, UNK 2 (vocabulary 259)."""

  pad_id, eos_id, unk_id = 0, 1, 2
  offset = 3
  vocab_size = 256 + offset

  def encode(self, text: str) -> list[int]:
    """Token ids without the EOS."""
    return [b + self.offset for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the byte tokens up to the first EOS; pad and UNK are dropped."""
    data = bytearray()
    for i in ids:
      if i == self.eos_id:
        break
      if i >= self.offset:
        data.append(int(i) - self.offset)
    return data.decode("utf-8", errors="replace")

  def encode_batch(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    prompts = _check_batch(prompts, max_length)
    return _pad_with_eos([self.encode(p) for p in prompts], max_length, self.eos_id, self.pad_id)


def _special_tokens(directory: str) -> dict[str, str]:
  """pad/eos token strings from transformers' tokenizer_config.json / special_tokens_map.json."""
  found = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    for key in ("pad_token", "eos_token"):
      value = config.get(key)
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        found[key] = value
  return found


class HuggingFaceTokenizer:
  """A tokenizer.json run by the `tokenizers` library, as transformers' fast T5 tokenizer does.

  The file's post-processor appends the EOS (T5 files have `$A </s>`; one is installed when the file
  has none); truncation leaves room for it, so truncated prompts keep their EOS.
  """

  def __init__(self, path: str, pad_token: str = "<pad>", eos_token: str = "</s>"):
    from tokenizers import Tokenizer, processors  # pylint: disable=import-outside-toplevel

    self.path = path
    try:
      self._tokenizer = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type on unreadable files
      raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from e
    self.pad_id = self._token_id(pad_token, "pad")
    self.eos_id = self._token_id(eos_token, "eos")
    self._pad_token = pad_token
    if self._tokenizer.post_processor is None:
      self._tokenizer.post_processor = processors.TemplateProcessing(
          single=f"$A {eos_token}", special_tokens=[(eos_token, self.eos_id)])
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _token_id(self, token: str, role: str) -> int:
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self.path}: the {role} token {token!r} is not in the vocabulary")
    return token_id

  def encode_batch(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    prompts = _check_batch(prompts, max_length)
    self._tokenizer.enable_truncation(max_length)
    self._tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=self._pad_token)
    encodings = self._tokenizer.encode_batch(prompts, add_special_tokens=True)
    ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(prompts), max_length)
    mask = np.asarray([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
    return ids, mask


class SentencePieceTokenizer:
  """A SentencePiece model (T5's spiece.model) with T5's EOS, truncation and padding."""

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel

    self.path = path
    try:
      self._processor = sentencepiece.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"{path}: not a readable SentencePiece model ({e})") from e
    self.pad_id = self._processor.pad_id()
    self.eos_id = self._processor.eos_id()
    if self.pad_id < 0 or self.eos_id < 0:
      raise ValueError(f"{path}: the SentencePiece model defines no pad or EOS id "
                       f"(pad_id={self.pad_id}, eos_id={self.eos_id}); T5 models define both")
    self.vocab_size = self._processor.get_piece_size()

  def encode_batch(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    prompts = _check_batch(prompts, max_length)
    return _pad_with_eos(self._processor.encode(prompts), max_length, self.eos_id, self.pad_id)


Tokenizer = ByteTokenizer | HuggingFaceTokenizer | SentencePieceTokenizer


def _from_directory(directory: str) -> Tokenizer:
  json_path = os.path.join(directory, "tokenizer.json")
  if os.path.isfile(json_path):
    return HuggingFaceTokenizer(json_path, **_special_tokens(directory))
  models = sorted(f for f in os.listdir(directory) if f.endswith(".model"))
  if "spiece.model" in models:
    models = ["spiece.model"]
  if len(models) == 1:
    return SentencePieceTokenizer(os.path.join(directory, models[0]))
  if models:
    raise ValueError(f"tokenizer directory {directory!r} holds several SentencePiece models "
                     f"{models}; name the file")
  raise TokenizerNotFoundError(
      f"tokenizer directory {directory!r} holds neither tokenizer.json nor a SentencePiece *.model")


def load_tokenizer(spec: str) -> Tokenizer:
  """"byte", a tokenizer directory, a tokenizer.json or a SentencePiece *.model file."""
  if spec == "byte":
    return ByteTokenizer()
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"load_tokenizer: spec must be 'byte' or a path, got {spec!r}")
  if os.path.isdir(spec):
    return _from_directory(spec)
  if not os.path.isfile(spec):
    raise TokenizerNotFoundError(f"tokenizer path {spec!r} does not exist (expected 'byte', a "
                                 "tokenizer directory, a tokenizer.json or a SentencePiece .model)")
  if spec.endswith(".json"):
    return HuggingFaceTokenizer(spec, **_special_tokens(os.path.dirname(spec) or "."))
  if spec.endswith(".model"):
    return SentencePieceTokenizer(spec)
  raise ValueError(f"tokenizer file {spec!r}: expected a tokenizer.json or a SentencePiece .model")
