"""The per-op profiler's pieces: HLO parsing, source lines, categories (no model, no torch)."""

import jax
import jax.numpy as jnp
import pytest

from eval import profile_ops


def _projection(x, w):
  return x @ w


def _normalise(x):
  return x / jnp.sum(x, axis=-1, keepdims=True)


def _compiled_text():
  def step(x, w):
    h = _projection(x, w)
    return _normalise(jnp.exp(h)).T

  x = jnp.ones((64, 32))
  return jax.jit(step).lower(x, jnp.ones((32, 48))).compile().as_text()


def test_parse_hlo_maps_instructions_to_their_source_functions():
  ops = profile_ops.parse_hlo(_compiled_text())
  by_function = {}
  for name, op in ops.items():
    if op.frames:
      by_function.setdefault(op.frames[0][2], []).append((name, op))
  assert {"_projection", "_normalise"} <= set(by_function)
  # The innermost frame is the function; its caller follows.
  name, op = by_function["_projection"][0]
  assert op.frames[0][0] == __file__ and op.frames[1][2] == "_compiled_text.<locals>.step"
  assert profile_ops._source(op.frames[0]) == "return x @ w"
  kinds = {k for _, op in by_function["_projection"] for k in {op.opcode} | op.fused_opcodes}
  assert "dot" in kinds or any(n.startswith("ynn_fusion") for n, _ in by_function["_projection"])


def test_categorize_ours_by_opcode_and_source_line():
  frame = lambda function, line: (profile_ops.__file__, line, function)
  make = lambda opcode, fused=(), frames=(): profile_ops.HloOp(opcode, frozenset(fused), frames)
  assert profile_ops.categorize_ours(make("copy")) == "layout"
  assert profile_ops.categorize_ours(make("fusion", {"transpose", "parameter"})) == "layout"
  assert profile_ops.categorize_ours(make("fusion", {"add", "multiply"}, (
      frame("<lambda>", 1), frame("apply_gradients", 2)))) == "optimizer"
  assert profile_ops.categorize_ours(make("dot", (), (frame("f", 0),))) == "matmul"
  assert profile_ops.categorize_ours(make("fusion", {"add"}, (frame("f", 0),)),
                                     "ynn_fusion.3") == "matmul"
  assert profile_ops.categorize_ours(make("fusion", {"exp"})) == "other"
  # A fusion holding a dot is matmul whatever its root (XLA fuses LayerNorm into it).
  assert profile_ops.categorize_ours(make("fusion", {"dot", "rsqrt", "reduce"}),
                                     "fusion.7") == "matmul"


@pytest.mark.parametrize("name, category", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "attention"),
    ("aten::_softmax_backward_data", "attention"), ("aten::native_layer_norm", "LayerNorm"),
    ("aten::native_layer_norm_backward", "LayerNorm"), ("aten::gelu_backward", "GELU"),
    ("aten::native_dropout", "dropout"), ("aten::bernoulli_", "dropout"),
    ("aten::_foreach_addcdiv_", "optimizer"), ("aten::linalg_vector_norm", "optimizer"),
    ("aten::copy_", "layout"), ("aten::clone", "layout"), ("aten::add", "other"),
    ("aten::embedding_dense_backward", "other"), ("aten::t", "layout"),
    ("aten::tanh", "other")])
def test_categorize_torch(name, category):
  assert profile_ops.categorize_torch(name) == category


def test_format_table_lists_every_category_and_ratio():
  side = lambda scale: {"wall_s": scale, "ops_total_s": scale,
                        "categories_s": {c: scale / 8 for c in profile_ops.CATEGORIES}}
  ours, ref = side(2.0), side(1.0)
  ours["top_lines_s"] = [("transformer.py:155 Attention.__call__: return _layer_norm", 0.25)]
  ref["top_ops_s"] = [("aten::addmm", 0.5)]
  table = profile_ops.format_table("train step", {"ours": ours, "reference": ref})
  for category in profile_ops.CATEGORIES:
    assert category in table
  assert "2.00" in table and "aten::addmm" in table and "transformer.py:155" in table
