"""Tokenizers: identical ids and masks to transformers' T5 tokenizers on self-trained vocabularies."""
import json

import numpy as np
import pytest

from flashworld_jax.models import tokenizer as tokenizer_lib

CORPUS = [
    "A red chair in a sunny room with wooden floors and a large window.",
    "The quick brown fox jumps over the lazy dog near the old stone bridge.",
    "Café déjà vu, naïve façade à Paris; crème brûlée près de l'église.",
    "Über Straße groß schön, Ærøskøbing og Malmö, señor niño, São Paulo.",
    "一个安静的房间，阳光明媚，木地板和大窗户。古老的石桥旁边有一条河。",
    "静かな部屋と赤い椅子、大きな窓と木の床。東京の夜景。",
    "[Static] a cozy living room, a modern kitchen, a forest path at dawn.",
]
TEXTS = [
    "A red chair",                                  # ASCII
    "[Static] a sunny room with a wooden floor",    # the pipeline's prefix
    "Café déjà vu à Paris, crème brûlée",           # accented
    "一个安静的房间 静かな部屋と赤い椅子",              # CJK
    "☃ unseen 🙂 glyphs, zebra",                    # characters outside the vocabulary → UNK
    "",                                             # EOS only
    "the old stone bridge " * 30,                   # long: truncated, keeps its EOS
]
T5_CONFIG = {"tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>",
             "unk_token": "<unk>", "extra_ids": 0, "model_max_length": 512}


def _train_tokenizer_json(directory, *, t5_pre_tokenizer=True, post_processor=True):
  """A Unigram tokenizer.json like T5's: specials <pad>=0, </s>=1, <unk>=2, Metaspace, `$A </s>`."""
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.Unigram())
  metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
  if t5_pre_tokenizer:  # what transformers' T5Tokenizer itself installs
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])
  else:                 # a file-defined pipeline, which only the file-verbatim loaders honour
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = metaspace
  tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
  trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                    unk_token="<unk>")
  tok.train_from_iterator(CORPUS * 10, trainer)
  assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
  if post_processor:
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
  directory.mkdir()
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(T5_CONFIG))
  (directory / "special_tokens_map.json").write_text(json.dumps(
      {k: T5_CONFIG[k] for k in ("pad_token", "eos_token", "unk_token")}))
  return str(directory)


def _transformers_ids(hf_tokenizer, texts, max_length):
  out = hf_tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                     add_special_tokens=True, return_attention_mask=True, return_tensors="np")
  return out["input_ids"], out["attention_mask"]


def _assert_same(ours, theirs, texts):
  (ids, mask), (hf_ids, hf_mask) = ours, theirs
  assert ids.dtype == np.int32 and mask.dtype == np.int32
  for i, text in enumerate(texts):
    np.testing.assert_array_equal(ids[i], hf_ids[i], err_msg=f"ids of {text!r}")
    np.testing.assert_array_equal(mask[i], hf_mask[i], err_msg=f"mask of {text!r}")


@pytest.mark.oracle
@pytest.mark.parametrize("max_length", [12, 64])
@pytest.mark.parametrize("loader", ["T5TokenizerFast", "PreTrainedTokenizerFast"])
def test_tokenizer_json_matches_transformers(tmp_path, loader, max_length):
  transformers = pytest.importorskip("transformers")
  directory = _train_tokenizer_json(tmp_path / "tokenizer")
  ours = tokenizer_lib.load_tokenizer(directory)
  assert isinstance(ours, tokenizer_lib.HuggingFaceTokenizer)
  hf = getattr(transformers, loader).from_pretrained(directory)
  assert (ours.pad_id, ours.eos_id) == (hf.pad_token_id, hf.eos_token_id) == (0, 1)
  ids, mask = ours.encode_batch(TEXTS, max_length)
  _assert_same((ids, mask), _transformers_ids(hf, TEXTS, max_length), TEXTS)
  assert np.any(ids == 2), "the test should exercise UNK"
  assert ids[-1, -1] == ours.eos_id and mask[-1].all()  # truncation kept the EOS


@pytest.mark.oracle
def test_file_defined_pipeline_matches_file_verbatim_loader(tmp_path):
  """The reference's transformers 4.x ran tokenizer.json verbatim: NFKC, whitespace runs included."""
  transformers = pytest.importorskip("transformers")
  directory = _train_tokenizer_json(tmp_path / "tokenizer", t5_pre_tokenizer=False)
  texts = TEXTS + ["  leading,   inner  and trailing spaces  ", "ｆｕｌｌ－ｗｉｄｔｈ ｒｏｏｍ ①"]
  ours = tokenizer_lib.load_tokenizer(directory + "/tokenizer.json")
  hf = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
  _assert_same(ours.encode_batch(texts, 48), _transformers_ids(hf, texts, 48), texts)


@pytest.mark.oracle
def test_tokenizer_json_without_post_processor_still_appends_eos(tmp_path):
  transformers = pytest.importorskip("transformers")
  directory = _train_tokenizer_json(tmp_path / "tokenizer", post_processor=False)
  ours = tokenizer_lib.load_tokenizer(directory)
  hf = transformers.T5TokenizerFast.from_pretrained(directory)
  ids, mask = ours.encode_batch(TEXTS, 20)
  _assert_same((ids, mask), _transformers_ids(hf, TEXTS, 20), TEXTS)
  lengths = mask.sum(1)
  np.testing.assert_array_equal(ids[np.arange(len(TEXTS)), lengths - 1], ours.eos_id)


@pytest.mark.oracle
@pytest.mark.parametrize("as_file", [False, True])
def test_sentencepiece_model_matches_transformers_t5(tmp_path, as_file):
  spm = pytest.importorskip("sentencepiece")
  transformers = pytest.importorskip("transformers")
  directory = tmp_path / "spm"
  directory.mkdir()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS * 10), model_prefix=str(directory / "spiece"), vocab_size=120,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      minloglevel=2)
  (directory / "tokenizer_config.json").write_text(json.dumps(T5_CONFIG))
  ours = tokenizer_lib.load_tokenizer(str(directory / "spiece.model") if as_file else str(directory))
  assert isinstance(ours, tokenizer_lib.SentencePieceTokenizer)
  hf = transformers.T5Tokenizer.from_pretrained(str(directory))
  assert (ours.pad_id, ours.eos_id, ours.vocab_size) == (0, 1, 120) == (0, 1, len(hf))
  texts = TEXTS + ["  leading,   inner  and trailing spaces  "]
  for max_length in (12, 64):
    _assert_same(ours.encode_batch(texts, max_length), _transformers_ids(hf, texts, max_length),
                 texts)


@pytest.mark.parametrize("text", ["A red chair.", "Café déjà vu", "静かな部屋と赤い椅子", "emoji 🙂", ""])
def test_byte_tokenizer_round_trip(text):
  tok = tokenizer_lib.load_tokenizer("byte")
  ids, mask = tok.encode_batch([text], 64)
  n = len(text.encode("utf-8"))
  assert mask[0].sum() == n + 1 and ids[0, n] == tok.eos_id == 1
  assert np.all(ids[0, n + 1:] == tok.pad_id) and tok.pad_id == 0
  assert np.all(ids[0, :n] >= 3) and np.all(ids[0, :n] < tok.vocab_size)
  assert tok.decode(ids[0].tolist()) == text


def test_byte_tokenizer_layout_and_truncation():
  tok = tokenizer_lib.ByteTokenizer()
  assert tok.vocab_size == 259 <= 384  # fits the tiny config's vocabulary
  ids, mask = tok.encode_batch(["AB", "abcdefgh"], 4)
  np.testing.assert_array_equal(ids, [[65 + 3, 66 + 3, 1, 0], [97 + 3, 98 + 3, 99 + 3, 1]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_missing_paths_raise_errors_naming_them(tmp_path):
  missing = str(tmp_path / "no_such_tokenizer")
  with pytest.raises(tokenizer_lib.TokenizerNotFoundError, match="no_such_tokenizer"):
    tokenizer_lib.load_tokenizer(missing)
  with pytest.raises(FileNotFoundError):  # also a ValueError, for callers that catch bad input
    tokenizer_lib.load_tokenizer(missing + "/tokenizer.json")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="neither tokenizer.json nor a SentencePiece"):
    tokenizer_lib.load_tokenizer(str(empty))
  other = tmp_path / "vocab.txt"
  other.write_text("a\n")
  with pytest.raises(ValueError, match="vocab.txt"):
    tokenizer_lib.load_tokenizer(str(other))
  for name in ("tokenizer.json", "spiece.model"):
    corrupt = tmp_path / name
    corrupt.write_text("not a tokenizer")
    with pytest.raises(ValueError, match=f"{name}: not a readable"):
      tokenizer_lib.load_tokenizer(str(corrupt))


def test_bad_arguments_raise_value_errors():
  tok = tokenizer_lib.ByteTokenizer()
  with pytest.raises(ValueError, match="max_length"):
    tok.encode_batch(["a"], 0)
  with pytest.raises(ValueError, match="sequence of strings"):
    tok.encode_batch("a chair", 8)
