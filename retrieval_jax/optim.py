"""Optax builders: BERT/DPR AdamW with linear warm-up and decay, clipping, and a decay mask.

The recipe of BERT, DPR and most dense retrievers trained with Hugging Face:

  lr(step) = lr * step / warmup                                 for step < warmup
           = lr * max(0, total - step) / max(1, total - warmup)  afterwards

(HF `get_linear_schedule_with_warmup`), gradients clipped to a global norm, then AdamW with
weight decay decoupled from the Adam moments (Loshchilov & Hutter) and not applied to biases
or LayerNorm parameters (HF's `no_decay = ["bias", "LayerNorm.weight"]`).

Optax evaluates the schedule at the number of updates already applied, so the first update
uses lr(0) = 0 when there is a warm-up, exactly as a HF scheduler stepped after the optimizer.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


DECAYS = ("linear", "constant")


def make_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                  warmup_ratio: float | None = None, decay: str = "linear") -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over the warm-up steps, then linear decay to 0 at `total_steps`
  (or, with `decay="constant"`, `lr` from then on: ColBERT's schedule).

  Args:
    lr: Peak learning rate, reached at step `warmup_steps`.
    total_steps: Number of optimizer updates in the run; the rate is 0 from here on.
    warmup_steps: Warm-up length in updates.
    warmup_ratio: Alternatively, warm-up as a fraction of `total_steps` (rounded down);
      overrides `warmup_steps` when given.
    decay: After the warm-up: `linear` to 0 at `total_steps`, or `constant`.

  Returns:
    A function of the step (int or traced array) returning the float32 learning rate.

  Raises:
    ValueError: For a non-positive `total_steps` or a warm-up outside [0, total_steps].
  """
  if total_steps < 1:
    raise ValueError(f"total_steps={total_steps} must be at least 1")
  if warmup_ratio is not None:
    if not 0.0 <= warmup_ratio <= 1.0:
      raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1]")
    warmup_steps = int(warmup_ratio * total_steps)
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
  if decay not in DECAYS:
    raise ValueError(f"optim.decay={decay!r} must be one of {DECAYS}")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # max(1, .) keeps both branches finite for warmup 0 or warmup == total; where() picks one.
    warm = lr * step / max(1, warmup_steps)
    if decay == "constant":
      return jnp.where(step < warmup_steps, warm, jnp.float32(lr))
    decayed = lr * jnp.maximum(0.0, total_steps - step) / max(1, total_steps - warmup_steps)
    return jnp.where(step < warmup_steps, warm, decayed)

  return schedule


def _key_name(key) -> str:
  """The name of one path entry: dict key, attribute name or sequence index."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def is_decayed(path: tuple[str, ...]) -> bool:
  """Whether the parameter at `path` (module names ..., leaf name) gets weight decay.

  No decay for biases, norm scales (`scale`), and anything inside a LayerNorm (Flax names
  ours `LayerNorm`, `output_LayerNorm`, ...). Kernels and embedding tables are decayed, as in
  HF's BERT/DPR training, which only exempts `bias` and `LayerNorm.weight`.
  """
  if path[-1] in ("bias", "scale"):
    return False
  return not any("layernorm" in name.lower().replace("_", "") for name in path[:-1])


def decay_mask(params: Any) -> Any:
  """A tree of bools (True: decay) shaped like the unboxed `params`.

  Accepts boxed (`nn.LogicallyPartitioned`) or unboxed trees: boxes are looked through
  first, and a bool per box is a valid optax mask prefix of the boxed tree too.
  """
  params = jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, params, is_leaf=_is_box)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: is_decayed(tuple(_key_name(k) for k in path)), params)


def sgd(learning_rate, *, b1: float, b2: float, eps: float, weight_decay: float,
        mask: Any) -> optax.GradientTransformation:
  """Plain gradient descent with decoupled weight decay (`b1`, `b2`, `eps` unused).

  Its update is linear in the gradient, so two runs whose gradients differ by rounding (e.g.
  the same job on 1 or on 2 processes, whose all-reduces sum in another order) stay within
  rounding of each other. Adam does not: its first steps divide each gradient by its own
  magnitude, turning a rounding-level gradient (a parameter whose true gradient is 0) into a
  step of the full learning rate.
  """
  del b1, b2, eps
  return optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.scale_by_learning_rate(learning_rate))


OPTIMIZERS = {"adamw": optax.adamw, "lamb": optax.lamb, "sgd": sgd}


def make_optimizer(lr: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                   max_grad_norm: float | None = None, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, warmup_ratio: float | None = None,
                   mask: Callable[[Any], Any] | Any = decay_mask,
                   name: str = "adamw", decay: str = "linear") -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (or LAMB) on `make_schedule`, without decay on biases
  and norms.

  Args:
    lr: Peak learning rate.
    total_steps: Optimizer updates in the run (the schedule reaches 0 there).
    warmup_steps: Linear warm-up length in updates.
    weight_decay: Decoupled weight decay coefficient (multiplied by the current rate).
    max_grad_norm: Clip the gradients' global norm to this; None or 0 disables clipping.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's denominator epsilon (added outside the square root, as torch and HF).
    warmup_ratio: Warm-up as a fraction of `total_steps`, instead of `warmup_steps`.
    mask: Which parameters get decay: a tree of bools or a function of the params (default
      `decay_mask`; the params passed to `init` / `update` may be boxed or unboxed).
    name: `adamw`, `lamb` (You et al. 2019: Adam steps rescaled per layer by the trust
      ratio ||w|| / ||step||; ANCE's optimizer), or `sgd` (plain gradient descent, for
      comparing runs to rounding; see `sgd`).
    decay: The schedule after the warm-up: `linear` or `constant` (`make_schedule`).

  Returns:
    The optax transformation. Its `update` needs `params` (for the decay term).
  """
  if max_grad_norm is not None and max_grad_norm < 0:
    raise ValueError(f"max_grad_norm={max_grad_norm} must be positive, 0 or None (no clipping)")
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name={name!r} must be one of {OPTIMIZERS}")
  schedule = make_schedule(lr, total_steps, warmup_steps, warmup_ratio, decay)
  adamw = OPTIMIZERS[name](schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=mask)
  if not max_grad_norm:
    return adamw
  # Clip first: the norm is taken over the raw gradients of all parameters, as torch's
  # clip_grad_norm_ before optimizer.step().
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


def _get(config: Any, key: str, default: Any) -> Any:
  """`config[key]` on a ConfigDict or dict, `default` when absent or None."""
  value = config[key] if key in config else None
  return default if value is None else value


def _schedule_kwargs(optim_config: Any, total_steps: int) -> dict[str, Any]:
  """`make_schedule` arguments from the config, with errors naming the `optim.*` key."""
  if _get(optim_config, "lr", None) is None:
    raise ValueError("optim.lr is required")
  warmup_steps = _get(optim_config, "warmup_steps", None)
  warmup_ratio = _get(optim_config, "warmup_ratio", None)
  if warmup_steps is not None and warmup_ratio is not None:
    raise ValueError(f"set only one of optim.warmup_steps={warmup_steps} and "
                     f"optim.warmup_ratio={warmup_ratio}")
  return dict(lr=float(optim_config["lr"]), total_steps=int(total_steps),
              warmup_steps=int(warmup_steps or 0),
              warmup_ratio=None if warmup_ratio is None else float(warmup_ratio),
              decay=str(_get(optim_config, "decay", "linear")))


def schedule_from_config(optim_config: Any, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule `optimizer_from_config` uses, for logging the rate."""
  return make_schedule(**_schedule_kwargs(optim_config, total_steps))


def optimizer_from_config(optim_config: Any, total_steps: int) -> optax.GradientTransformation:
  """`make_optimizer` from the config's `optim` section.

  Keys (a `ml_collections.ConfigDict` or dict; absent or None means the default):
    lr: Peak learning rate (required).
    warmup_steps: Warm-up in updates (default 0), or
    warmup_ratio: warm-up as a fraction of `total_steps`; setting both is an error.
    weight_decay: Decoupled weight decay (default 0.0).
    max_grad_norm: Global-norm clipping threshold (default None or 0: no clipping).
    b1, b2, eps: Adam hyperparameters (defaults 0.9, 0.999, 1e-8).
    name: `adamw` (default), `lamb` or `sgd`.

  Args:
    optim_config: The section described above, e.g. `config.optim`.
    total_steps: Optimizer updates in the run, computed by the training loop.

  Returns:
    The optax transformation; `schedule_from_config` gives its learning rate per step.

  Raises:
    ValueError: Naming the `optim.*` key that is missing or conflicting.
  """
  max_grad_norm = _get(optim_config, "max_grad_norm", None)
  return make_optimizer(
      **_schedule_kwargs(optim_config, total_steps),
      weight_decay=float(_get(optim_config, "weight_decay", 0.0)),
      max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
      b1=float(_get(optim_config, "b1", 0.9)), b2=float(_get(optim_config, "b2", 0.999)),
      eps=float(_get(optim_config, "eps", 1e-8)), name=str(_get(optim_config, "name", "adamw")))
