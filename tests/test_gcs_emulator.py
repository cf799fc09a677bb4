"""The GCS emulator speaks the API of every client the library writes gs:// with."""

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from retrieval_jax import checkpoint


def test_epath_round_trip(gcs_server, gcs_bucket):
  path = epath.Path(gcs_bucket) / "dir" / "file.txt"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("hello")
  assert path.read_text() == "hello"
  assert gcs_server.list_objects(gcs_bucket[len("gs://"):]) == ["dir/file.txt"]


def test_orbax_checkpoint_round_trip(gcs_server, gcs_bucket):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
  with checkpoint.Checkpointer(f"{gcs_bucket}/run", async_save=False) as ckpt:
    ckpt.save(3, state, extra={"position": 7}, host={"ids": np.arange(4)}, force=True)
  with checkpoint.Checkpointer(f"{gcs_bucket}/run") as ckpt:
    restored, extra = ckpt.restore(abstract_state=jax.eval_shape(lambda: state))
    host = ckpt.restore_host(3)
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert extra == {"position": 7}
  np.testing.assert_array_equal(host["ids"], np.arange(4))
  objects = gcs_server.list_objects(gcs_bucket[len("gs://"):], "run/checkpoints/3/")
  assert any(name.startswith("run/checkpoints/3/state/") for name in objects), objects
