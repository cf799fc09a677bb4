"""`models/llama.py` and `models/llama_weights.py` against transformers' `LlamaForCausalLM`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrieval_jax.models import llama, llama_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_hf(tmp_path, tie: bool, seed: int = 0):
  """A random 3-layer grouped-query Llama saved as safetensors; returns (dir, torch model)."""
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
      rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tie)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # norms away from 1 so a misplaced norm weight shows
    for name, p in model.named_parameters():
      if "norm" in name:
        p.uniform_(0.5, 1.5)
  model.save_pretrained(tmp_path)
  return tmp_path, model


def _left_padded(seed=1):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 97, size=(3, 9))
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding, as batched generation uses
  mask[2, :1] = 0
  ids[mask == 0] = 0
  return ids, mask


def _torch_logits(model, ids, mask):
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))
  return out.logits.numpy()


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_transformers_on_a_left_padded_batch(tmp_path, tie):
  path, reference = _tiny_hf(tmp_path, tie)
  config, params = llama_weights.load_hf_dir(path)
  assert config.num_kv_heads == 2 and config.tie_word_embeddings == tie
  ids, mask = _left_padded()
  ours = np.asarray(llama.forward(llama.Llama(config), params, jnp.asarray(ids),
                                  jnp.asarray(mask)))
  theirs = _torch_logits(reference, ids, mask)
  real = mask.astype(bool)
  worst = np.abs(ours[real] - theirs[real]).max()
  print(f"[measured] tiny Llama (tie={tie}) logits max abs diff vs transformers: {worst:.1e}")
  assert worst <= 1e-5


def test_cached_decoding_equals_the_full_forward(tmp_path):
  """Prefill of a prefix and then one token at a time gives the full forward's logits."""
  path, _ = _tiny_hf(tmp_path, tie=True)
  config, params = llama_weights.load_hf_dir(path)
  model = llama.Llama(config)
  ids, mask = _left_padded()
  full = np.asarray(llama.forward(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  prefix, slots = 5, ids.shape[1]
  cache = llama.init_cache(config, ids.shape[0], slots)
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  key_mask = np.zeros((ids.shape[0], slots), np.int32)
  key_mask[:, :prefix] = mask[:, :prefix]
  logits, cache = model.apply({"params": params}, ids[:, :prefix], positions[:, :prefix],
                              key_mask, cache, 0, last_only=True)
  steps = [np.asarray(logits)]
  for t in range(prefix, slots):
    key_mask[:, t] = mask[:, t]
    logits, cache = model.apply({"params": params}, ids[:, t:t + 1], positions[:, t:t + 1],
                                key_mask, cache, t, last_only=True)
    steps.append(np.asarray(logits))
  stepped = np.stack(steps, axis=1)  # the logits at positions prefix-1 .. slots-1
  np.testing.assert_allclose(stepped, full[:, prefix - 1:], atol=2e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_unrolled_step_equals_the_scanned_model(tmp_path, tie):
  """`unrolled_step` (decoding's per-layer caches) gives `Llama`'s logits and cache."""
  path, _ = _tiny_hf(tmp_path, tie=tie)
  config, params = llama_weights.load_hf_dir(path)
  model = llama.Llama(config)
  ids, mask = _left_padded()
  slots, t = ids.shape[1], 6
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  key_mask = np.zeros((ids.shape[0], slots), np.int32)
  key_mask[:, :t] = mask[:, :t]
  _, cache = model.apply({"params": params}, ids[:, :t], positions[:, :t], key_mask,
                         llama.init_cache(config, ids.shape[0], slots), 0, last_only=True)
  key_mask[:, t] = mask[:, t]
  args = (ids[:, t:t + 1], positions[:, t:t + 1], key_mask)
  scanned, scanned_cache = model.apply({"params": params}, *args, cache, t, last_only=True)
  unrolled, layer_caches = llama.unrolled_step(model, params, llama.unstack_layers(params),
                                               *args, llama.unstack_cache(cache), t)
  np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), atol=1e-6)
  # Equal up to rounding: XLA fuses the unrolled layers differently (differences ~4e-8).
  for layer, (keys, values) in enumerate(layer_caches):
    np.testing.assert_allclose(np.asarray(keys), np.asarray(scanned_cache.keys[layer]),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(values), np.asarray(scanned_cache.values[layer]),
                               atol=1e-6)


@pytest.mark.parametrize("chunk", [2, 4, 9])
def test_chunked_prefill_equals_the_full_forward(tmp_path, chunk):
  """`decode.prefill` in chunks that each read only the slots up to their end gives the full
  forward's last logits and the same cache (left padding included)."""
  from retrieval_jax.generation import decode  # pylint: disable=g-import-not-at-top
  path, _ = _tiny_hf(tmp_path, tie=True)
  config, params = llama_weights.load_hf_dir(path)
  model = llama.Llama(config)
  ids, mask = _left_padded()
  full = np.asarray(llama.forward(model, params, jnp.asarray(ids), jnp.asarray(mask)))
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  logits, cache = decode.prefill(model, params, jnp.asarray(ids), jnp.asarray(positions),
                                 jnp.asarray(mask), chunk)
  np.testing.assert_allclose(np.asarray(logits), full[:, -1], atol=2e-5)
  whole = model.apply({"params": params}, ids, positions, mask,
                      llama.init_cache(config, *ids.shape), 0)[1]
  real = mask.astype(bool)  # a padding slot holds masked garbage that depends on the chunks
  np.testing.assert_allclose(np.asarray(cache.keys)[:, real], np.asarray(whole.keys)[:, real],
                             atol=1e-5)


def _llama_cpp_permute(weights, heads):
  """llama.cpp's `convert_hf_to_gguf.py` LlamaModel.permute, as written there."""
  return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
          .swapaxes(1, 2).reshape(weights.shape))


def test_unpermute_inverts_llama_cpp_permutation():
  weight = np.random.default_rng(0).normal(size=(3 * 8, 5))
  permuted = _llama_cpp_permute(weight, 3)
  assert not np.array_equal(permuted, weight)
  np.testing.assert_array_equal(llama_weights.unpermute_rotary_rows(permuted, 3), weight)


def test_config_rejects_what_it_cannot_run():
  with pytest.raises(ValueError, match="num_kv_heads"):
    llama.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1,
                      num_heads=3, num_kv_heads=2, head_dim=4)
  with pytest.raises(ValueError, match="rope parameters"):
    llama_weights.config_from_hf({"model_type": "llama", "num_attention_heads": 2,
                                  "rope_parameters": {"rope_type": "llama3"}})
  with pytest.raises(ValueError, match="model_type='bert'"):
    llama_weights.config_from_hf({"model_type": "bert"})


def test_missing_weight_names_the_tensor(tmp_path):
  path, model = _tiny_hf(tmp_path, tie=True)
  config, _ = llama_weights.load_hf_dir(path)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  del state["model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
    llama_weights.params_from_state(state, config)


def test_params_carry_logical_axes_and_init_matches_loaded_shapes(tmp_path):
  path, _ = _tiny_hf(tmp_path, tie=False)
  config, loaded = llama_weights.load_hf_dir(path)
  cache = llama.init_cache(config, 1, 4)
  boxed = jax.eval_shape(lambda: llama.Llama(config).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32),
      jnp.ones((1, 4), jnp.int32), cache, 0))["params"]
  names = jax.tree_util.tree_map(lambda p: p.names, boxed,
                                 is_leaf=lambda p: hasattr(p, "names"))
  assert names["layers"]["self_attn"]["k_proj"]["kernel"] == ("layers", "embed", "kv_heads", "kv")
  assert names["layers"]["mlp"]["gate_proj"]["kernel"] == ("layers", "embed", "mlp")
  shapes = jax.tree_util.tree_map(lambda p: p.value.shape, boxed,
                                  is_leaf=lambda p: hasattr(p, "names"))
  assert shapes == jax.tree_util.tree_map(lambda a: a.shape, loaded)


def test_greedy_generation_equals_transformers_generate(tmp_path):
  """Left-padded batched greedy decoding gives transformers' tokens, row for row, and a row
  ends at its first stop token while the others go on."""
  from retrieval_jax.generation import decode  # pylint: disable=g-import-not-at-top
  path, reference = _tiny_hf(tmp_path, tie=True, seed=3)
  config, params = llama_weights.load_hf_dir(path)
  ids, mask = _left_padded(seed=4)
  keys = decode.row_keys(0, np.zeros(3), np.zeros(3))

  def ours(stop):
    tokens, lengths = decode.generate(llama.Llama(config), params, jnp.asarray(ids),
                                      jnp.asarray(mask), keys, jnp.asarray([stop]),
                                      max_new_tokens=12)
    return np.asarray(tokens), np.asarray(lengths)

  free, _ = ours(-1)
  stop = int(free[0, 4])  # row 0 now ends at its 5th token (or earlier)
  tokens, lengths = ours(stop)
  print(f"generated lengths with stop id {stop}: {lengths.tolist()}")
  assert lengths[0] <= 5 and lengths.max() == 12
  for row in range(ids.shape[0]):
    prompt = ids[row][mask[row] == 1]
    with torch.no_grad():
      out = reference.generate(torch.tensor(prompt[None]), max_new_tokens=12, do_sample=False,
                               eos_token_id=stop, pad_token_id=0)
    expected = out[0, len(prompt):].numpy()
    assert list(tokens[row, :lengths[row]]) == list(expected), row
    assert (tokens[row, lengths[row]:] == -1).all()


def test_a_shared_prefill_equals_a_prefill_per_sample(tmp_path):
  """`samples=3`: one prefill per prompt copied to its 3 rows gives the tokens of 3 separate
  prefills of the same prompt with the same row keys (sampled at temperature 1)."""
  from retrieval_jax.generation import decode  # pylint: disable=g-import-not-at-top
  path, _ = _tiny_hf(tmp_path, tie=True, seed=5)
  config, params = llama_weights.load_hf_dir(path)
  ids, mask = _left_padded(seed=6)
  keys = decode.row_keys(3, np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3))
  kwargs = dict(max_new_tokens=6, temperature=1.0, top_p=0.95)
  shared = decode.generate(llama.Llama(config), params, jnp.asarray(ids), jnp.asarray(mask),
                           keys, jnp.asarray([-1]), samples=3, **kwargs)
  separate = decode.generate(llama.Llama(config), params, jnp.asarray(np.repeat(ids, 3, 0)),
                             jnp.asarray(np.repeat(mask, 3, 0)), keys, jnp.asarray([-1]),
                             **kwargs)
  np.testing.assert_array_equal(np.asarray(shared[0]), np.asarray(separate[0]))
  assert len({tuple(row) for row in np.asarray(shared[0])[:3]}) > 1  # the samples differ


def test_top_p_samples_only_from_the_nucleus_and_greedy_is_argmax():
  """NumPy nucleus: the most likely tokens until their mass reaches top_p (the crossing one
  kept), as transformers' TopPLogitsWarper; 2,000 draws never leave it and cover it."""
  from retrieval_jax.generation import decode  # pylint: disable=g-import-not-at-top
  logits = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1], np.float32))
  probs = np.exp(logits) / np.exp(logits).sum()
  order = np.argsort(-probs)
  before = np.cumsum(probs[order]) - probs[order]
  nucleus = set(order[before < 0.8].tolist())  # {1, 2, 3}: 0.4 + 0.3 < 0.8 <= + 0.15
  keys = jax.random.split(jax.random.key(0), 2000)
  draws = decode.sample_token(jnp.tile(logits, (2000, 1)), keys, 1.0, 0.8)
  assert set(np.asarray(draws).tolist()) == nucleus == {1, 2, 3}
  greedy = decode.sample_token(jnp.asarray(logits)[None], keys[:1], 0.0, 1.0)
  assert int(greedy[0]) == 1
