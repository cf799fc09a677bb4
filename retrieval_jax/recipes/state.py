"""The train state every recipe uses: layout, initialisation, the optimizer update.

A state is a plain dict, saved by Orbax as it is:

  {"params": trainable, "opt_state": its optimizer state, "step": int32, "rng": key data,
   **extra}

`extra` is non-trainable state the step updates (Contriever's EMA key encoder, a key queue
and its pointer). Boxed leaves (`nn.LogicallyPartitioned`, as `abstract_params` gives) are
sharded by the logical-axis rules, the optimizer moments like their params, everything else
replicated. Frozen inputs (a teacher, a frozen copy) are not part of the state: see
`base.FrozenInput`.

The step contract: `step(state, frozen, batch) -> (state, metrics)`, pure; the new state has
the structure, shapes and dtypes of the old, and `metrics` holds float32 scalars including
`REQUIRED_METRICS`. `check_step` verifies it by tracing once, before compiling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from retrieval_jax import sharding

# Independent PRNG streams, folded from the config seed: one per purpose (DESIGN.md).
RNG_STREAMS = {"init": 0, "dropout": 1, "cropping": 2, "masking": 3, "sampling": 4,
               "decoder_init": 5}
# What the loop reads from every step's metrics: the loss, whether the update was applied
# (the loop stops on 0), and the learning rate the update used.
REQUIRED_METRICS = ("loss", "finite", "lr")
CORE_KEYS = ("params", "opt_state", "step", "rng")


def rng_stream(seed: int, purpose: str) -> jax.Array:
  """The key of one purpose (`init`, `dropout`, ...) for a run seed."""
  if purpose not in RNG_STREAMS:
    raise ValueError(f"PRNG purpose {purpose!r} is not one of {sorted(RNG_STREAMS)}")
  return jax.random.fold_in(jax.random.key(seed), RNG_STREAMS[purpose])


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Shapes (`abstract`) and placements (`shardings`) of a train state."""
  abstract: dict
  shardings: dict


def layout(boxed_params: Any, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
           extra: Mapping[str, Any] | None = None) -> StateLayout:
  """The layout of a state with these params and `extra` entries.

  Args:
    boxed_params: Abstract params with logical axis names (e.g. `abstract_params(model)`).
    tx: The optimizer (its state is laid out like the params).
    mesh: The training mesh.
    extra: Non-trainable entries: abstract trees, boxed (sharded by the rules) or not
      (replicated), e.g. `{"ema": boxed_params, "queue": ShapeDtypeStruct((K, d), f32)}`.
  """
  abstract = abstract_state(boxed_params, tx, extra)
  param_shardings = sharding.param_shardings(boxed_params, mesh)
  replicated = sharding.replicated(mesh)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"],
                                        param_shardings,
                                        transform_non_params=lambda _: replicated)
  shardings = dict(params=param_shardings, opt_state=opt_shardings, step=replicated,
                   rng=replicated)
  for name, tree in (extra or {}).items():
    shardings[name] = sharding.param_shardings(tree, mesh)
  return StateLayout(abstract, shardings)


def abstract_state(boxed_params: Any, tx: optax.GradientTransformation,
                   extra: Mapping[str, Any] | None = None) -> dict:
  """Shapes and dtypes of the state `layout` describes, without a mesh."""
  extra = dict(extra or {})
  clash = sorted(set(extra) & set(CORE_KEYS))
  if clash:
    raise ValueError(f"extra state entries {clash} clash with the core keys {CORE_KEYS}")
  params = nn.meta.unbox(boxed_params)
  abstract = dict(params=params, opt_state=jax.eval_shape(tx.init, params),
                  step=jax.ShapeDtypeStruct((), jnp.int32),
                  rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
  for name, tree in extra.items():
    abstract[name] = nn.meta.unbox(tree)
  return abstract


def init_state(shardings: dict, tx: optax.GradientTransformation, params: Any,
               rng: jax.Array, extra: Mapping[str, Any] | None = None) -> dict:
  """The step-0 state on the mesh.

  Args:
    shardings: `layout(...).shardings`.
    tx: The optimizer.
    params: Host (or device) params shaped like `state_layout.abstract["params"]`.
    rng: The key the step derives its randomness from (e.g. `rng_stream(seed, "dropout")`).
    extra: Initial values of the extra entries (host arrays), keyed as in the layout.
  """
  extra = dict(extra or {})
  expected = sorted(set(shardings) - set(CORE_KEYS))
  if sorted(extra) != expected:
    raise ValueError(f"initial extra state {sorted(extra)} does not match the layout's "
                     f"{expected}")
  params = jax.device_put(params, shardings["params"])
  # jit with out_shardings: the moments are created sharded, never whole on one device.
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  state = dict(params=params, opt_state=opt_state,
               step=jax.device_put(jnp.int32(0), shardings["step"]),
               rng=jax.device_put(jax.random.key_data(rng), shardings["rng"]))
  for name, value in extra.items():
    state[name] = jax.device_put(value, shardings[name])
  return state


def step_rng(state: dict, enabled: bool = True) -> jax.Array | None:
  """This step's key (the state's key folded with the step), or None when `enabled` is off."""
  if not enabled:
    return None
  return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def apply_gradients(state: dict, grads: Any, loss: jax.Array, *,
                    tx: optax.GradientTransformation, schedule: optax.Schedule,
                    updates: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
  """One optimizer update plus the recipe's `updates` of extra entries, all or nothing.

  A non-finite loss or gradient keeps every entry (params, moments and the extra ones) as it
  was: the loop stops on `finite`, and the state it inspects is the one before the bad batch.

  Returns:
    (new state, metrics): `loss`, `grad_norm`, `lr` (the rate this update used) and `finite`.
  """
  step = state["step"]
  grad_norm = optax.global_norm(grads)
  deltas, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], deltas)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = dict(state, params=keep(params, state["params"]),
                   opt_state=keep(opt_state, state["opt_state"]), step=step + 1)
  for name, value in (updates or {}).items():
    if name in CORE_KEYS or name not in state:
      raise ValueError(f"state update {name!r} is not an extra entry of the state")
    new_state[name] = keep(value, state[name])
  metrics = dict(loss=loss, grad_norm=grad_norm, lr=jnp.asarray(schedule(step), jnp.float32),
                 finite=finite.astype(jnp.float32))
  return new_state, metrics


def ema(average: Any, value: Any, momentum: float | jax.Array) -> Any:
  """`momentum * average + (1 - momentum) * value`, leaf by leaf (MoCo's key encoder)."""
  return jax.tree_util.tree_map(lambda a, v: momentum * a + (1.0 - momentum) * v, average, value)


def enqueue(queue: jax.Array, pointer: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `rows` [n, ...] into the ring buffer `queue` [size, ...] from `pointer` on,
  wrapping around; returns (queue, the next pointer). The oldest rows are overwritten."""
  size = queue.shape[0]
  if rows.shape[0] > size:
    raise ValueError(f"cannot enqueue {rows.shape[0]} rows into a queue of {size}")
  slots = (pointer + jnp.arange(rows.shape[0], dtype=pointer.dtype)) % size
  return queue.at[slots].set(rows.astype(queue.dtype)), (pointer + rows.shape[0]) % size


def check_step(name: str, step, abstract_state: dict, abstract_frozen: Any,
               abstract_batch: dict) -> None:
  """Traces `step` once (no compilation) and checks the contract.

  Raises:
    ValueError: Naming the recipe and what is wrong: a required metric missing, a metric that
      is not a float32 scalar, or a new state whose structure, shape or dtype differs.
  """
  new_state, metrics = jax.eval_shape(step, abstract_state, abstract_frozen, abstract_batch)
  missing = [key for key in REQUIRED_METRICS if key not in metrics]
  if missing:
    raise ValueError(f"recipe {name!r}: the step's metrics lack {missing} (the loop needs "
                     f"{list(REQUIRED_METRICS)})")
  bad = sorted(key for key, value in metrics.items()
               if value.shape != () or value.dtype != jnp.float32)
  if bad:
    raise ValueError(f"recipe {name!r}: metrics {bad} are not float32 scalars")
  old_leaves = jax.tree_util.tree_leaves_with_path(abstract_state)
  new_leaves = jax.tree_util.tree_leaves_with_path(new_state)
  if (jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(abstract_state)):
    raise ValueError(f"recipe {name!r}: the step returns a state of another structure "
                     f"(keys {sorted(new_state)} vs {sorted(abstract_state)})")
  for (path, old), (_, new) in zip(old_leaves, new_leaves):
    if old.shape != new.shape or old.dtype != new.dtype:
      raise ValueError(f"recipe {name!r}: state entry {jax.tree_util.keystr(path)} changes "
                       f"from {old.dtype}{list(old.shape)} to {new.dtype}{list(new.shape)}")
