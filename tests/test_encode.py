"""Tests for retrieval_jax.encode with all-MiniLM-L6-v2 on 8 fake CPU devices.

References: `sentence_transformers.SentenceTransformer` for the embeddings, a 1-device mesh for
sharding, and texts encoded one at a time for the order restoration after length bucketing.
Measured differences are printed with a `[measured]` prefix (run with -s to see them).
"""

import jax
import numpy as np
import pytest
import sentence_transformers

from retrieval_jax import encode
from retrieval_jax.data import tokenize as tok
from retrieval_jax.models.pooling import PoolingConfig

_MAX_LENGTH = 256


def _texts():
  """Varied lengths in a shuffled order: very short, medium, and two over 256 tokens."""
  rng = np.random.default_rng(0)
  words = ("dense retrieval embeds queries and passages with a transformer encoder trained on "
           "question answer pairs from wikipedia while bm25 counts exact term matches").split()
  texts = [" ".join(rng.choice(words, n)) for n in (3, 9, 1, 24, 45, 6, 14, 70, 2, 11)]
  texts[2] = "Hi!"
  texts.insert(4, "An extremely long passage. " + " ".join(rng.choice(words, 400)))
  texts.insert(9, " ".join(rng.choice(words, 300)) + " ends beyond the limit")
  return texts


_TEXTS = _texts()


@pytest.fixture(scope="module")
def encoder(minilm_dir):
  return encode.load_encoder(minilm_dir)


@pytest.fixture(scope="module")
def sharded(encoder):
  """The texts embedded on the default mesh (all 8 devices), one row per device per batch."""
  return encode.encode_texts(encoder, _TEXTS, max_length=_MAX_LENGTH, batch_size=8,
                             progress=False)


def _one_device():
  return encode.data_mesh(jax.devices()[:1])


def test_default_mesh_has_eight_devices():
  assert len(jax.local_devices()) == 8
  mesh = encode.data_mesh()
  assert mesh.devices.size == 8 and dict(mesh.shape) == {encode.DATA_AXIS: 8, "model": 1}


def test_load_encoder_reads_declared_pooling(encoder):
  assert encoder.pooling == PoolingConfig("mean", normalize=True)
  assert encoder.config.hidden_size == 384 and encoder.tokenizer.is_fast


def test_texts_exercise_truncation_and_several_buckets(encoder):
  lengths = [len(ids) for ids in encoder.tokenizer(_TEXTS)["input_ids"]]
  assert sum(n > _MAX_LENGTH for n in lengths) == 2
  assert min(lengths) <= 16 and any(32 < n <= 64 for n in lengths)


def test_matches_sentence_transformers(minilm_dir, sharded):
  reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
  assert reference.max_seq_length == _MAX_LENGTH  # Both truncate at 256 tokens.
  expected = reference.encode(_TEXTS, normalize_embeddings=True, batch_size=4,
                              convert_to_numpy=True)
  assert sharded.shape == expected.shape == (len(_TEXTS), 384)
  cosine = np.sum(sharded * expected, axis=-1) / (
      np.linalg.norm(sharded, axis=-1) * np.linalg.norm(expected, axis=-1))
  diff = float(np.abs(sharded - expected).max())
  print(f"[measured] encode_texts (8 devices) vs SentenceTransformer.encode: min cosine "
        f"{cosine.min():.7f} (1 - cos = {1 - cosine.min():.2g}), max abs diff {diff:.3g}")
  assert np.all(cosine >= 0.9999), cosine
  np.testing.assert_allclose(np.linalg.norm(sharded, axis=-1), 1.0, rtol=1e-5)


def test_eight_devices_equal_one_device(encoder, sharded):
  single = encode.encode_texts(encoder, _TEXTS, max_length=_MAX_LENGTH, batch_size=8,
                               mesh=_one_device(), progress=False)
  diff = float(np.abs(sharded - single).max())
  print(f"[measured] 8-device vs 1-device mesh: max abs diff {diff:.3g}")
  assert diff <= 1e-5


def test_order_equals_texts_encoded_one_by_one(encoder, sharded):
  # The long texts, the shortest and a medium one: they sit in different buckets and batches.
  picks = [4, 9, 2, 8, 0]
  alone = np.stack([
      encode.encode_texts(encoder, [_TEXTS[i]], max_length=_MAX_LENGTH, batch_size=1,
                          mesh=_one_device(), progress=False)[0] for i in picks])
  diff = float(np.abs(sharded[picks] - alone).max())
  print(f"[measured] batched (8 devices) vs one text at a time: max abs diff {diff:.3g}")
  assert diff <= 1e-5
  # Distinct texts give clearly distinct vectors, so a swapped row could not pass the check.
  gram = alone @ alone.T
  assert np.all(gram[~np.eye(len(picks), dtype=bool)] < 0.999)


def test_permuted_input_gives_permuted_output(encoder, sharded):
  """A batch size that does not divide the texts (rounded up to 8 devices) and another order."""
  perm = np.random.default_rng(1).permutation(len(_TEXTS))
  out = encode.encode_texts(encoder, [_TEXTS[i] for i in perm], max_length=_MAX_LENGTH,
                            batch_size=3, progress=False)
  np.testing.assert_allclose(out, sharded[perm], atol=1e-5)


def test_float16_output(encoder, sharded):
  short = [i for i, t in enumerate(_TEXTS) if len(t.split()) < 20]
  out = encode.encode_texts(encoder, [_TEXTS[i] for i in short], max_length=_MAX_LENGTH,
                            out_dtype=np.float16, batch_size=8, progress=False)
  assert out.dtype == np.float16 and out.shape == (len(short), 384)
  np.testing.assert_allclose(out.astype(np.float32), sharded[short], atol=2e-3)


def test_encode_token_ids_is_encode_texts_on_tokenised_input(encoder, sharded):
  token_ids = tok.tokenize(encoder.tokenizer, _TEXTS, _MAX_LENGTH)
  out = encode.encode_token_ids(encoder, token_ids, max_length=_MAX_LENGTH, batch_size=8,
                                progress=False)
  np.testing.assert_array_equal(out, sharded)  # One implementation: bit-identical.


def test_encode_token_ids_rejects_bad_input(encoder):
  with pytest.raises(ValueError, match="no token_ids"):
    encode.encode_token_ids(encoder, [], max_length=16, progress=False)
  with pytest.raises(ValueError, match="max_length=16"):
    encode.encode_token_ids(encoder, [[101] + [1037] * 20 + [102]], max_length=16,
                            progress=False)
  with pytest.raises(ValueError, match="out_dtype"):
    encode.encode_token_ids(encoder, [[101, 102]], max_length=16, out_dtype=np.float64,
                            progress=False)


def test_rejects_bad_output_dtype(encoder):
  with pytest.raises(ValueError, match="out_dtype"):
    encode.encode_texts(encoder, ["a"], max_length=16, out_dtype=np.float64, progress=False)


def test_rejects_non_string_texts(encoder):
  with pytest.raises(TypeError):
    encode.encode_texts(encoder, ["a", None], max_length=16, progress=False)


def test_empty_input_raises_value_error(encoder):
  with pytest.raises(ValueError, match="no texts"):
    encode.encode_texts(encoder, [], max_length=16, progress=False)


def test_empty_input_raises(encoder):
  with pytest.raises(Exception):
    encode.encode_texts(encoder, [], max_length=16, progress=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_embeddings(tmp_path, dtype):
  values = np.random.default_rng(2).standard_normal((5, 7)).astype(np.float32)
  path = encode.save_embeddings(tmp_path / "nested" / "dir" / "emb.npy", values, dtype=dtype)
  assert path.exists()
  loaded = np.load(path)
  assert loaded.dtype == dtype and loaded.shape == values.shape
  np.testing.assert_array_equal(loaded, values.astype(dtype))


def test_save_embeddings_rejects_other_dtypes(tmp_path):
  with pytest.raises(ValueError, match="float32 or float16"):
    encode.save_embeddings(tmp_path / "emb.npy", np.zeros((2, 3), np.float32), dtype=np.float64)


def test_load_encoder_pooling_overrides(minilm_dir):
  cls = encode.load_encoder(minilm_dir, pooling="cls")
  assert cls.pooling == PoolingConfig("cls", normalize=True)  # Normalisation kept.
  raw = encode.load_encoder(minilm_dir, pooling=PoolingConfig("mean"), normalize=False)
  assert raw.pooling == PoolingConfig("mean", normalize=False)
  with pytest.raises(ValueError, match="projection"):
    encode.load_encoder(minilm_dir, pooling=PoolingConfig("mean", projection_dim=8))


def test_cpu_forward_compiles_without_ynnpack_fusions(encoder):
  """The encoding forward takes `encode.CPU_FORWARD_COMPILER_OPTIONS` on CPU: no YNNPACK fusion
  in its executable, where the same forward jitted with the defaults has them."""
  mesh = _one_device()
  assert encode.forward_compiler_options(mesh) == encode.CPU_FORWARD_COMPILER_OPTIONS
  forward, _, _ = encode._make_forward(encoder.model, mesh)  # pylint: disable=protected-access
  ids = np.ones((2, 16), np.int32)
  ours = forward.lower(encoder.params, ids, ids).compile().as_text()
  default = jax.jit(lambda p, i, m: encoder.model.apply({"params": p}, i, m)).lower(
      encoder.params, ids, ids).compile().as_text()
  assert "ynn_fusion" in default
  assert "ynn_fusion" not in ours
