"""ColBERT token vectors and MaxSim against a PyTorch reference on real SciFact texts.

The reference is transformers' `BertModel` plus a torch `Linear`, with the input built as
stanford-futuredata/ColBERT builds it (`QueryTokenizer.tensorize`: tokenise to
query_maxlen - 1, insert [Q] after [CLS], pad ids -> [MASK]; `DocTokenizer.tensorize`;
`ColBERT.query` / `ColBERT.doc` / `colbert_score`), written here from that code.
"""

import json
import string

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from retrieval_jax import encode_tokens, losses
from retrieval_jax.data import colbert_format as cf
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models import colbert_files, hf
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.models.heads import TokenProjectionConfig

DIM = 128


@pytest.fixture(scope="module")
def minilm():
  """(model dir, tokenizer, our TokenEncoder factory, torch BertModel, torch Linear)."""
  model_dir = hf.resolve_model_dir("minilm")
  config, params, _ = hf.load_pretrained(model_dir)
  kernel = np.random.default_rng(0).normal(0, 0.05, (config.hidden_size, DIM)).astype(np.float32)
  params = dict(params, token_head={"linear": {"kernel": kernel}})
  tokenizer = tok.load_tokenizer(model_dir)
  bert = transformers.BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
  linear = torch.nn.Linear(config.hidden_size, DIM, bias=False)
  with torch.no_grad():
    linear.weight.copy_(torch.from_numpy(kernel.T))
  model = TextEncoder(config, token_projection=TokenProjectionConfig(dim=DIM))

  def ours(**format_kwargs):
    return encode_tokens.TokenEncoder(model, params, tokenizer,
                                      cf.colbert_format(tokenizer, **format_kwargs))

  return tokenizer, ours, bert, linear


@pytest.fixture(scope="module")
def texts(scifact_train):
  data = scifact_train
  queries = list(data.query_texts[:12]) + ["what is this? (a, b; c!) " * 6]
  docs = list(data.doc_strings()[:10])
  return queries, docs


def _reference_queries(tokenizer, bert, linear, texts, query_maxlen=32, attend=False):
  marker = tokenizer.convert_tokens_to_ids("[unused0]")
  obj = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                  max_length=query_maxlen - 1)
  ids, mask = obj["input_ids"], obj["attention_mask"]
  ids = torch.cat([ids[:, :1], torch.full_like(ids[:, :1], marker), ids[:, 1:]], dim=1)
  mask = torch.cat([mask[:, :1], torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
  ids[ids == tokenizer.pad_token_id] = tokenizer.mask_token_id
  if attend:
    mask[ids == tokenizer.mask_token_id] = 1
  with torch.no_grad():
    q = linear(bert(ids, attention_mask=mask)[0])
    keep = (ids != tokenizer.pad_token_id).unsqueeze(2).float()
    return torch.nn.functional.normalize(q * keep, p=2, dim=2).numpy(), ids.numpy()


def _reference_docs(tokenizer, bert, linear, texts, doc_maxlen=180):
  marker = tokenizer.convert_tokens_to_ids("[unused1]")
  skiplist = {tokenizer.encode(s, add_special_tokens=False)[0] for s in string.punctuation}
  obj = tokenizer(texts, padding="longest", truncation="longest_first", return_tensors="pt",
                  max_length=doc_maxlen - 1)
  ids, mask = obj["input_ids"], obj["attention_mask"]
  ids = torch.cat([ids[:, :1], torch.full_like(ids[:, :1], marker), ids[:, 1:]], dim=1)
  mask = torch.cat([mask[:, :1], torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
  with torch.no_grad():
    d = linear(bert(ids, attention_mask=mask)[0])
    keep = torch.tensor([[(x not in skiplist) and (x != tokenizer.pad_token_id) for x in row]
                         for row in ids.tolist()])
    d = torch.nn.functional.normalize(d * keep.unsqueeze(2).float(), p=2, dim=2)
  return d.numpy(), keep.numpy()


def _colbert_score(q, d, keep):
  """colbert_score_reduce: masked document tokens at -9999, max over them, sum over Q."""
  sims = np.einsum("qid,pjd->qpij", q.astype(np.float64), d.astype(np.float64))
  sims[np.broadcast_to(~keep[None, :, None, :], sims.shape)] = -9999
  return sims.max(-1).sum(-1)


@pytest.mark.parametrize("attend", [False, True])
def test_query_vectors_match_reference(minilm, texts, attend):
  tokenizer, ours, bert, linear = minilm
  queries, _ = texts
  expected, ref_ids = _reference_queries(tokenizer, bert, linear, queries, attend=attend)
  encoder = ours(attend_to_mask_tokens=attend)
  got = encode_tokens.encode_queries(encoder, queries, batch_size=8, progress=False)
  assert got.shape == (len(queries), 32, DIM)
  assert np.max(np.abs(got - expected)) <= 1e-4
  # The [MASK] augmentation vectors take part: unit vectors, not zeros, with the attention
  # mask 0 on them by default (a fused-attention kernel that zeroes masked rows fails here).
  augmented = ref_ids == tokenizer.mask_token_id
  assert augmented.sum() > 100
  np.testing.assert_allclose(np.linalg.norm(got[augmented], axis=-1), 1.0, atol=1e-5)


def test_literal_special_tokens_keep_their_positions(minilm):
  tokenizer, ours, _, _ = minilm
  fmt = ours().format
  query = "what is [PAD] and [SEP] here"
  ids = cf.tokenize_queries(tokenizer, fmt, [query])
  batch = next(tok.length_bucketed_batches(ids, 1, fmt.pad_id, fmt.query_length))
  arrays = cf.query_arrays(fmt, batch.input_ids, batch.attention_mask)
  length = len(ids[0])
  # The typed [PAD] stays a real, attended token; only the padding becomes [MASK].
  assert tokenizer.pad_token_id in arrays["input_ids"][0, :length]
  assert arrays["attention_mask"][0, :length].all()
  assert not arrays["attention_mask"][0, length:].any()
  assert (arrays["input_ids"][0, length:] == fmt.mask_id).all()
  doc_ids = cf.tokenize_documents(tokenizer, fmt, ["a [PAD] b [SEP] c."])
  batch = next(tok.length_bucketed_batches(doc_ids, 1, fmt.pad_id, fmt.doc_max_length))
  keep = cf.document_arrays(fmt, batch.input_ids, batch.attention_mask)["keep_mask"][0]
  typed_pad = np.flatnonzero(batch.input_ids[0] == tokenizer.pad_token_id)
  assert keep[typed_pad[typed_pad < len(doc_ids[0])]].all()   # typed [PAD] kept
  period = tokenizer.convert_tokens_to_ids(".")
  assert not keep[batch.input_ids[0] == period].any()          # punctuation dropped


def test_document_vectors_and_maxsim_match_reference(minilm, texts):
  tokenizer, ours, bert, linear = minilm
  queries, docs = texts
  expected, keep = _reference_docs(tokenizer, bert, linear, docs)
  encoder = ours()
  got = encode_tokens.encode_documents(encoder, docs, batch_size=4, out_dtype=np.float32,
                                       progress=False)
  np.testing.assert_array_equal(got.lengths, keep.sum(1))
  assert np.max(np.abs(got.vectors - expected[keep])) <= 1e-4
  # Punctuation and padding rows are zero in the reference and absent from ours.
  assert not np.any(expected[~keep])
  q_ref, _ = _reference_queries(tokenizer, bert, linear, queries)
  reference = _colbert_score(q_ref, expected, keep)
  q_ours = encode_tokens.encode_queries(encoder, queries, batch_size=8, progress=False)
  padded = np.zeros((len(docs), int(got.lengths.max()), DIM), np.float32)
  mask = np.zeros(padded.shape[:2], bool)
  for i, (start, stop) in enumerate(zip(got.offsets[:-1], got.offsets[1:])):
    padded[i, :stop - start], mask[i, :stop - start] = got.vectors[start:stop], True
  scores = np.asarray(losses.maxsim_scores(q_ours, padded, mask))
  assert np.max(np.abs(scores - reference)) <= 1e-4
  # float16 storage (the index's) moves scores by rounding only.
  half = encode_tokens.encode_documents(encoder, docs, batch_size=4, progress=False)
  assert half.vectors.dtype == np.float16
  assert np.max(np.abs(half.vectors.astype(np.float32) - got.vectors)) <= 1e-3


def test_format_errors_name_the_key(minilm):
  tokenizer, _, _, _ = minilm
  with pytest.raises(ValueError, match="model.colbert.query_marker"):
    cf.colbert_format(tokenizer, query_marker="[NOT_A_TOKEN]")
  with pytest.raises(ValueError, match="query_length"):
    cf.colbert_format(tokenizer, query_length=3)


def test_insert_marker_padded_equals_tokenising_with_the_marker(minilm):
  tokenizer, ours, _, _ = minilm
  fmt = ours().format
  texts = ["first text, short", "a second, somewhat longer text with more words in it", "x"]
  plain = tok.tokenize(tokenizer, texts, fmt.doc_max_length - 1)
  batch = next(tok.length_bucketed_batches(plain, 3, fmt.pad_id, fmt.doc_max_length - 1,
                                           pad_to_multiple_of=1))
  ids, mask = cf.insert_marker_padded(batch.input_ids, batch.attention_mask,
                                      fmt.doc_marker_id, fmt.pad_id, fmt.doc_max_length)
  expected = cf.tokenize_documents(tokenizer, fmt, texts)
  for row, index in enumerate(batch.indices):
    length = len(expected[index])
    assert ids[row, :length].tolist() == expected[index]
    assert mask[row, :length].all() and not mask[row, length:].any()


def test_colbert_directory_round_trip_and_transformers_load(minilm, tmp_path):
  tokenizer, ours, bert, linear = minilm
  encoder = ours(attend_to_mask_tokens=True, doc_max_length=120)
  settings = colbert_files.ColbertSettings(dim=DIM, attend_to_mask_tokens=True,
                                           doc_max_length=120)
  out = colbert_files.save(tmp_path / "colbert", encoder.model.encoder, encoder.params,
                           tokenizer_dir=hf.resolve_model_dir("minilm"), settings=settings)
  assert colbert_files.is_colbert_dir(out)
  loaded = encode_tokens.load_token_encoder(out)
  assert loaded.format == encoder.format
  for path, value in jax.tree_util.tree_leaves_with_path(encoder.params):
    if "pooler" in jax.tree_util.keystr(path):
      continue
    got = loaded.params
    for key in path:
      got = got[key.key]
    np.testing.assert_array_equal(got, value)
  texts = ["a query about cells", "another one"]
  np.testing.assert_array_equal(
      encode_tokens.encode_queries(loaded, texts, progress=False),
      encode_tokens.encode_queries(encoder, texts, progress=False))
  # transformers reads the encoder (HF_ColBERT's `bert.` prefix) and the head is linear.weight.
  reloaded = transformers.BertModel.from_pretrained(out)
  for name, tensor in bert.state_dict().items():
    if "pooler" not in name:
      torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)
  head = safetensors.numpy.load_file(str(out / "model.safetensors"))["linear.weight"]
  np.testing.assert_array_equal(head, linear.weight.detach().numpy())
  meta = json.loads((out / "artifact.metadata").read_text())
  assert (meta["query_token_id"], meta["doc_maxlen"], meta["attend_to_mask_tokens"]) == (
      "[unused0]", 120, True)
  with pytest.raises(ValueError, match="not a ColBERT directory"):
    colbert_files.load(hf.resolve_model_dir("minilm"))


def test_encoding_on_eight_devices_equals_one(minilm, texts):
  _, ours, _, _ = minilm
  queries, docs = texts
  encoder = ours()
  assert len(jax.devices()) == 8
  one = encode_tokens.encode.data_mesh(jax.devices()[:1])
  q8 = encode_tokens.encode_queries(encoder, queries, batch_size=8, progress=False)
  q1 = encode_tokens.encode_queries(encoder, queries, batch_size=8, mesh=one, progress=False)
  np.testing.assert_allclose(q8, q1, atol=1e-5)
  d8 = encode_tokens.encode_documents(encoder, docs, batch_size=8, out_dtype=np.float32,
                                      progress=False)
  d1 = encode_tokens.encode_documents(encoder, docs, batch_size=8, mesh=one,
                                      out_dtype=np.float32, progress=False)
  np.testing.assert_array_equal(d8.lengths, d1.lengths)
  np.testing.assert_allclose(d8.vectors, d1.vectors, atol=1e-5)


def test_pylate_layout_reads_like_the_stanford_one(minilm, tmp_path):
  """PyLate's own layout: the encoder at the root, the head in 1_Dense, the format in
  config_sentence_transformers.json (as `pylate.models.ColBERT.save` writes it)."""
  _, ours, _, _ = minilm
  encoder = ours()
  stanford = colbert_files.save(tmp_path / "stanford", encoder.model.encoder, encoder.params,
                                tokenizer_dir=hf.resolve_model_dir("minilm"),
                                settings=colbert_files.ColbertSettings(query_length=24))
  pylate = tmp_path / "pylate"
  hf.save_pretrained(pylate, encoder.model.encoder, {"backbone": encoder.params["backbone"]},
                     tokenizer_dir=hf.resolve_model_dir("minilm"))
  (pylate / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
  (pylate / "1_Dense").mkdir()
  kernel = np.asarray(encoder.params["token_head"]["linear"]["kernel"])
  safetensors.numpy.save_file({"linear.weight": np.ascontiguousarray(kernel.T)},
                              str(pylate / "1_Dense" / "model.safetensors"))
  (pylate / "config_sentence_transformers.json").write_text(json.dumps({
      "query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 24,
      "document_length": 180, "attend_to_expansion_tokens": False,
      "skiplist_words": list(string.punctuation)}))
  assert colbert_files.is_colbert_dir(pylate)
  a, b = (encode_tokens.load_token_encoder(d) for d in (stanford, pylate))
  assert a.format == b.format and a.format.query_length == 24
  texts = ["a query about cells"]
  np.testing.assert_array_equal(encode_tokens.encode_queries(a, texts, progress=False),
                                encode_tokens.encode_queries(b, texts, progress=False))
