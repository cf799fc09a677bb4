"""A test recipe that uses every part of the recipe contract (tests/test_contract_recipe.py).

- a frozen teacher (`base.FrozenInput`): a second encoder the step reads, never trains;
- extra state the step updates: an EMA copy of the params (MoCo's key encoder) and a
  ring-buffer queue with its pointer;
- every layer's hidden states and the MLM head of the student (`TextEncoder.outputs`,
  `TextEncoder.mlm_logits`);
- a batcher with a host-only key.

The loss has no meaning; it only makes every piece matter. Queue rows are the first
`QUEUE_DIM` token ids of each query, so a NumPy reference can replay them.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from retrieval_jax import optim, sharding
from retrieval_jax.models import hf, registry
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.recipes import base
from retrieval_jax.recipes import state as state_lib

QUEUE_SIZE = 12   # not a multiple of the batch: the ring buffer wraps mid-batch
QUEUE_DIM = 4
MOMENTUM = 0.9
LENGTH = 16


class TokenBatcher:
  """Seeded random token ids by step; `row_ids` stays on the host."""
  host_keys = frozenset({"row_ids"})

  def __init__(self, vocab_size: int, batch: int, seed: int):
    self.vocab_size, self.batch, self.seed = vocab_size, batch, seed
    self.steps_per_epoch = 1000

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    ids = rng.integers(5, self.vocab_size, size=(self.batch, LENGTH)).astype(np.int32)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=self.batch)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask,
            "row_ids": np.arange(self.batch) + step * self.batch}

  def iterate(self, start_step: int, end_step: int):
    for step in range(start_step, end_step):
      yield step, self.batch_at(step)

  def position(self, step: int) -> dict[str, int]:
    return {"step": step, "seed": self.seed}

  def check_position(self, position: Mapping[str, int]) -> None:
    assert position["seed"] == self.seed, position


class CaptureParams(base.Hook):
  """Records the params (host copies) before the first step and after every step."""

  def __init__(self):
    self.params: dict[int, Any] = {}

  def start(self, step, state, host):
    self.params[step] = jax.device_get(state["params"])

  def after_step(self, step, state):
    self.params[step] = jax.device_get(state["params"])


def loss_and_metrics(params, frozen, batch, *, student: TextEncoder, teacher: TextEncoder):
  ids, mask = batch["input_ids"], batch["attention_mask"]
  out = student.apply({"params": params}, ids, mask, output_hidden_states=True,
                      method=TextEncoder.outputs)
  logits = student.apply({"params": params}, out.last_hidden_state,
                         method=TextEncoder.mlm_logits)
  target = teacher.apply({"params": frozen["teacher"]}, ids, mask)
  distill = jnp.mean(jnp.sum((out.embedding - target) ** 2, axis=-1))
  layers = jnp.mean(jnp.stack([jnp.mean(h ** 2) for h in out.hidden_states]))
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
  mlm = -jnp.sum(picked * mask) / jnp.sum(mask)
  loss = distill + 0.01 * layers + 0.1 * mlm
  return loss, dict(distill=distill, mlm=mlm)


def train_step(state, frozen, batch, *, student, teacher, tx, schedule):
  (loss, metrics), grads = jax.value_and_grad(
      functools.partial(loss_and_metrics, student=student, teacher=teacher), has_aux=True)(
          state["params"], frozen, batch)
  # MoCo's order: the key encoder moves towards the params before this update.
  ema = state_lib.ema(state["ema"], state["params"], MOMENTUM)
  keys = batch["input_ids"][:, :QUEUE_DIM].astype(jnp.float32)
  queue, pointer = state_lib.enqueue(state["queue"], state["queue_ptr"], keys)
  new_state, update = state_lib.apply_gradients(
      state, grads, loss, tx=tx, schedule=schedule,
      updates={"ema": ema, "queue": queue, "queue_ptr": pointer})
  return new_state, dict(metrics, **update)


# workdir -> the params a run went through (config.capture=True), for NumPy references.
CAPTURED: dict[str, CaptureParams] = {}


def build(config: Any, workdir, mesh) -> base.Recipe:
  student_spec = registry.build(config.model)
  teacher_spec = registry.build(config.teacher)
  student, teacher = student_spec.module, teacher_spec.module
  sharding.validate(config, [student_spec.encoder, teacher_spec.encoder])
  steps = int(config.train.num_steps)
  tx = optim.optimizer_from_config(config.optim, steps)
  schedule = optim.schedule_from_config(config.optim, steps)
  boxed = student_spec.abstract_params()
  extra = {"ema": boxed,
           "queue": jax.ShapeDtypeStruct((QUEUE_SIZE, QUEUE_DIM), jnp.float32),
           "queue_ptr": jax.ShapeDtypeStruct((), jnp.int32)}
  layout = state_lib.layout(boxed, tx, mesh, extra)
  seed = int(config.seed)

  def init_state():
    params = student_spec.initial_params(state_lib.rng_stream(seed, "init"))
    return state_lib.init_state(
        layout.shardings, tx, params, state_lib.rng_stream(seed, "dropout"),
        extra={"ema": params, "queue": np.zeros((QUEUE_SIZE, QUEUE_DIM), np.float32),
               "queue_ptr": np.int32(0)})

  def export(state, out_dir):
    params = jax.device_get(state["params"])
    if jax.process_index():
      return []
    return [hf.save_pretrained(pathlib.Path(out_dir) / "encoder", student_spec.encoder, params)]

  hooks = []
  if config.get("capture", False):
    hooks.append(CAPTURED.setdefault(str(workdir), CaptureParams()))
  return base.Recipe(
      name="contract_test", total_steps=steps,
      batcher=TokenBatcher(student_spec.encoder.vocab_size, int(config.train.batch_size), seed),
      abstract_state=layout.abstract, state_shardings=layout.shardings,
      batch_sharding=sharding.batch_sharding(mesh), init_state=init_state,
      train_step=functools.partial(train_step, student=student, teacher=teacher, tx=tx,
                                   schedule=schedule),
      eval_models=lambda state: base.EvalModels(), eval_roles=(), export=export,
      frozen={"teacher": base.FrozenInput(
          abstract=teacher_spec.abstract_params(),
          load=lambda: teacher_spec.initial_params(state_lib.rng_stream(seed, "init")),
          source=str(teacher_spec.model_dir))},
      hooks=hooks)


def restore_eval_models(config, workdir, step=None):
  raise NotImplementedError("the contract test recipe has no evaluators")
