"""The recipe contract end to end on 8 fake devices (mesh 4 x 2), with `tests/contract_recipe.py`:
a frozen teacher, an EMA copy and a ring-buffer queue in the state, every layer's hidden states
and an MLM head; resume; the step contract checked before compiling."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from retrieval_jax import checkpoint, recipes, run_config, train
from retrieval_jax.models import hf
from retrieval_jax.models.encoder import TextEncoder
from retrieval_jax.recipes import state as state_lib
from tests import contract_recipe
from tests.helpers import REPO

sys.path.insert(0, str(REPO))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position

recipes.register("contract_test", "tests.contract_recipe")
STEPS = 6


def _write_bert(directory, seed, layers, intermediate):
  torch.manual_seed(seed)
  model = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
      intermediate_size=intermediate, max_position_embeddings=64))
  model.save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("contract_models")
  return (_write_bert(root / "student", 1, 2, 64), _write_bert(root / "teacher", 2, 1, 48))


def _config(model_dirs, **train):
  student, teacher = model_dirs
  config = common.training_config()
  config.recipe = "contract_test"
  config.model.update(name=str(student), pooling="cls", normalize="false", mlm_head=True,
                      dropout=0.0)
  config.teacher = common.model_config()
  config.teacher.update(name=str(teacher), pooling="cls", normalize="false")
  config.evals = {}
  config.mesh.update(data=4, model=2)
  config.train.update(batch_size=8, num_steps=STEPS, num_epochs=None, log_every_steps=1,
                      checkpoint_every_steps=3, progress=False, **train)
  config.optim.update(lr=1e-3, warmup_steps=1, warmup_ratio=None)
  config.capture = True
  return config


@pytest.fixture(scope="module")
def straight(model_dirs, tmp_path_factory):
  """One uninterrupted run: (workdir, TrainResult)."""
  workdir = tmp_path_factory.mktemp("contract_straight")
  return workdir, train.train(_config(model_dirs), workdir)


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def test_frozen_teacher_is_unchanged_sharded_and_outside_the_optimizer(straight, model_dirs):
  workdir, result = straight
  teacher_spec = hf.load_pretrained(model_dirs[1])[1]
  np.testing.assert_equal(_host(result.frozen["teacher"]), teacher_spec)  # bit-identical
  # Sharded by the logical-axis rules like any parameter: the MLP width over `model`.
  kernel = result.frozen["teacher"]["backbone"]["layer_0"]["mlp"]["intermediate"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  assert kernel.is_deleted() is False  # never donated
  # Only the student is trained: no [32, 48] (the teacher's MLP) anywhere in the state.
  state = result.state
  assert set(state) == {"params", "opt_state", "step", "rng", "ema", "queue", "queue_ptr"}
  shapes = {leaf.shape for leaf in jax.tree_util.tree_leaves(state)}
  assert (32, 48) not in shapes and (32, 64) in shapes
  # Nor in the checkpoint; its fingerprint is recorded instead.
  with checkpoint.Checkpointer(workdir, async_save=False) as ckpt:
    extra = ckpt.restore(STEPS, abstract_state=jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))[1]
  assert set(extra["frozen_sha256"]) == {"teacher"}
  assert extra["frozen_sha256"]["teacher"] == train.fingerprint(teacher_spec)


def test_ema_and_queue_equal_numpy(straight):
  workdir, result = straight
  hook = contract_recipe.CAPTURED[str(workdir)]
  ema = hook.params[0]
  for step in range(STEPS):
    ema = jax.tree_util.tree_map(
        lambda a, p: np.float32(contract_recipe.MOMENTUM) * a
        + np.float32(1 - contract_recipe.MOMENTUM) * p, ema, hook.params[step])
  got = _host(result.state["ema"])
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ema)))
  print(f"[measured] EMA after {STEPS} steps vs NumPy: max abs {worst:.2g}")
  assert worst <= 1e-6
  # The queue: every batch's first token ids, written round the ring of 12 rows.
  batcher = contract_recipe.TokenBatcher(99, 8, 0)
  queue = np.zeros((contract_recipe.QUEUE_SIZE, contract_recipe.QUEUE_DIM), np.float32)
  pointer = 0
  for step in range(STEPS):
    for row in batcher.batch_at(step)["input_ids"][:, :contract_recipe.QUEUE_DIM]:
      queue[pointer] = row
      pointer = (pointer + 1) % contract_recipe.QUEUE_SIZE
  np.testing.assert_array_equal(_host(result.state["queue"]), queue)
  assert int(result.state["queue_ptr"]) == pointer == (STEPS * 8) % contract_recipe.QUEUE_SIZE


def test_resume_equals_the_uninterrupted_run_and_checks_the_teacher(straight, model_dirs,
                                                                     tmp_path):
  _, full = straight
  first = train.train(_config(model_dirs, stop_at_step=3), tmp_path / "run")
  assert first.stopped_early and first.step == 3
  other = _write_bert(tmp_path / "other_teacher", 9, 1, 48)
  config = _config(model_dirs)
  config.teacher.name = str(other)
  with pytest.raises(run_config.ConfigChangedError, match=r"teacher\.name"):
    train.train(config, tmp_path / "run")
  # Even accepted as a config change, another teacher is not the frozen input it trained with.
  with pytest.raises(ValueError, match=r"frozen input 'teacher' .* is not the one step 3"):
    train.train(config, tmp_path / "run", allow_config_change=True)
  resumed = train.train(_config(model_dirs), tmp_path / "run")
  assert resumed.step == STEPS
  keys = ("params", "ema", "queue", "queue_ptr", "opt_state")
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         _host({k: resumed.state[k] for k in keys}),
                         _host({k: full.state[k] for k in keys}))


def test_trained_model_matches_transformers_hidden_states_and_mlm_logits(straight):
  workdir, result = straight
  directory = workdir / "export" / "encoder"
  reference = transformers.AutoModelForMaskedLM.from_pretrained(directory).eval()
  config, params, _ = hf.load_pretrained(directory, mlm_head=True)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         _host(result.state["params"]))  # the export is the trained state
  batch = contract_recipe.TokenBatcher(99, 8, 7).batch_at(0)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  model = TextEncoder(config, mlm_head=True)
  out = model.apply({"params": params}, ids, mask, output_hidden_states=True,
                    method=TextEncoder.outputs)
  logits = model.apply({"params": params}, out.last_hidden_state, method=TextEncoder.mlm_logits)
  with torch.no_grad():
    ref = reference(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long),
                    output_hidden_states=True)
  real = mask.astype(bool)
  hidden = max(float(np.abs(np.asarray(a) - b.numpy())[real].max())
               for a, b in zip(out.hidden_states, ref.hidden_states))
  logit = float(np.abs(np.asarray(logits) - ref.logits.numpy())[real].max())
  print(f"[measured] trained contract model vs transformers: hidden states {hidden:.2g}, "
        f"MLM logits {logit:.2g}")
  assert len(out.hidden_states) == 3 and hidden < 1e-5 and logit < 1e-4


def test_evaluator_needing_a_role_the_recipe_lacks_is_refused_before_training(
    model_dirs, tmp_path, monkeypatch):
  config = _config(model_dirs)
  config.evals = {"dev": common.retrieval_eval("dev")}
  compiled = []
  monkeypatch.setattr(train.jax, "jit", lambda *a, **k: compiled.append(1))
  with pytest.raises(ValueError, match=r"evals\.dev needs the model roles \['query', "
                                       r"'passage'\]; recipe 'contract_test' provides \[\]"):
    train.train(config, tmp_path)
  assert not compiled


def test_step_contract_is_checked_before_compiling():
  abstract = {"params": jax.ShapeDtypeStruct((2,), jnp.float32)}

  def no_lr(state, frozen, batch):
    return state, {"loss": jnp.float32(0), "finite": jnp.float32(1)}

  with pytest.raises(ValueError, match=r"recipe 'r': the step's metrics lack \['lr'\]"):
    state_lib.check_step("r", no_lr, abstract, {}, {})

  def grows(state, frozen, batch):
    metrics = {"loss": jnp.float32(0), "finite": jnp.float32(1), "lr": jnp.float32(0)}
    return {"params": jnp.zeros((3,))}, metrics

  with pytest.raises(ValueError, match=r"state entry \['params'\] changes"):
    state_lib.check_step("r", grows, abstract, {}, {})

  def vector_loss(state, frozen, batch):
    return state, {"loss": jnp.zeros(2), "finite": jnp.float32(1), "lr": jnp.float32(0)}

  with pytest.raises(ValueError, match=r"metrics \['loss'\] are not float32 scalars"):
    state_lib.check_step("r", vector_loss, abstract, {}, {})


def test_enqueue_and_ema_against_numpy():
  queue, pointer = jnp.zeros((5, 2)), jnp.int32(3)
  rows = jnp.arange(8.0).reshape(4, 2)
  queue, pointer = state_lib.enqueue(queue, pointer, rows)
  np.testing.assert_array_equal(queue, [[4, 5], [6, 7], [0, 0], [0, 1], [2, 3]])
  assert int(pointer) == 2
  with pytest.raises(ValueError, match="cannot enqueue 6 rows into a queue of 5"):
    state_lib.enqueue(queue, pointer, jnp.zeros((6, 2)))
  np.testing.assert_allclose(state_lib.ema({"a": jnp.ones(2)}, {"a": jnp.zeros(2)}, 0.75)["a"],
                             [0.75, 0.75])
