"""The device mesh, logical-axis rules, and shardings for parameters and batches.

Every parameter of `retrieval_jax.models` carries logical axis names (`embed`, `heads`,
`mlp`, ...). `LOGICAL_AXIS_RULES` maps those names onto the two mesh axes: `data` (batch
parallelism; in-batch negatives span it) and `model` (tensor parallelism: attention heads
and the MLP width). Changing the parallelism layout is a change of rules, not of models, as
in MaxText and t5x.

Typical use by the training loop:

  validate(config, encoder_config)                      # before anything compiles
  mesh = mesh_from_config(config)
  shardings = param_shardings(abstract_params(model), mesh)
  params = shard_params(params, shardings)
  step = jax.jit(step, in_shardings=(..., batch_sharding(mesh)), ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

# Logical name -> mesh axis (None: replicated). Names absent from the rules are an error in
# `param_shardings`, because flax would silently replicate a misspelt name.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    # Activations.
    ("batch", DATA_AXIS),
    ("length", None),
    # Megatron-style tensor parallelism: q/k/v are split by head and the attention output
    # projection by its input heads; the MLP is split along its hidden width. Each block
    # then needs one all-reduce after attention and one after the MLP.
    ("heads", MODEL_AXIS),
    ("mlp", MODEL_AXIS),
    # The per-head width stays whole: `heads` already uses the model axis.
    ("kv", None),
    # The residual stream is replicated. Mapping it to `data` would give ZeRO-3/FSDP-style
    # parameter sharding; BERT-sized towers fit on one device, so we keep the all-gathers off.
    ("embed", None),
    ("embed_out", None),
    # Replicated on purpose. Splitting the table over `model` is possible, but the token
    # lookup then becomes a masked local gather plus an all-reduce of [batch, length, embed]
    # activations on every forward, to save ~90 MB (BERT-base) per device. And BERT's 30,522
    # rows are not divisible by 4 or 8, which jit's in_shardings require.
    ("vocab", None),
    ("position", None),
    ("token_type", None),
    ("projection", None),
    # Contriever's MoCo queue of keys: its rows over `data`, so no device holds all of it.
    ("queue", DATA_AXIS),
    # The causal LM (LameR): its scanned layer axis stays whole on every device, and the
    # key/value heads of grouped-query attention are few (3 in SmolLM2-135M), rarely a
    # multiple of the model axis, so their projections are replicated.
    ("layers", None),
    ("kv_heads", None),
)


def _resolve_mesh_shape(data: int, model: int, num_devices: int) -> tuple[int, int]:
  """(data, model) with -1 replaced by the remaining devices; errors name the config key."""
  sizes = {"mesh.data": data, "mesh.model": model}
  for key, size in sizes.items():
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"{key}={size!r} must be a positive integer or -1 (the rest of the devices)")
  if data == -1 and model == -1:
    raise ValueError("mesh.data and mesh.model cannot both be -1; set at least one of them")
  for key, size in sizes.items():
    if size != -1 and num_devices % size:
      raise ValueError(f"{key}={size} does not divide the {num_devices} devices")
  if data == -1:
    data = num_devices // model
  if model == -1:
    model = num_devices // data
  if data * model != num_devices:
    raise ValueError(f"mesh.data * mesh.model = {data} * {model} = {data * model} does not equal "
                     f"the {num_devices} devices; use -1 for one axis to take the rest")
  return int(data), int(model)


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over `devices`.

  Args:
    data: Size of the data-parallel axis; -1 takes the devices `model` leaves.
    model: Size of the tensor-parallel axis; -1 takes the devices `data` leaves.
    devices: Devices to use (default: all devices of all processes).

  Returns:
    A mesh whose device order follows the physical topology (ICI rings on TPU).

  Raises:
    ValueError: Naming `mesh.data` / `mesh.model` when the sizes do not fit the devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = _resolve_mesh_shape(data, model, len(devices))
  # Auto axes: sharding goes through in/out_shardings and the rules, not through types.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """All of this process's devices (or `devices`) on the `data` axis: the mesh of work that
  needs no communication between processes (encoding, a shard's search)."""
  return make_mesh(-1, 1, jax.local_devices() if devices is None else devices)


def _get(config: Any, dotted_key: str, default: Any = KeyError) -> Any:
  """`config["a"]["b"]` for "a.b" on dicts and ConfigDicts; `default` when a part is missing."""
  node = config
  for part in dotted_key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      if default is KeyError:
        raise ValueError(f"the config has no key {dotted_key}") from None
      return default
  return node


def refresh_devices_per_process(config: Any) -> int:
  """`config.mesh.refresh_devices` (default 0): devices per process set aside for refreshes."""
  count = _get(config, "mesh.refresh_devices", 0)
  if not isinstance(count, (int, np.integer)) or count < 0:
    raise ValueError(f"mesh.refresh_devices={count!r} must be an integer >= 0")
  return int(count)


def split_devices(refresh_per_process: int, devices: Sequence[jax.Device] | None = None
                  ) -> tuple[list[jax.Device], list[jax.Device]]:
  """Sets the last `refresh_per_process` devices of every process aside from training.

  A refresh (ANCE's negatives) mined on devices of its own overlaps training instead of
  taking turns with it on the same chips. Every process keeps the same number of devices for
  each role, so each mines its shard of the corpus on its own refresh devices, as without them.

  Args:
    refresh_per_process: Devices each process sets aside (its highest ids).
    devices: All devices (default: `jax.devices()`, every process's).

  Returns:
    (the devices that train, over all processes; this process's refresh devices).

  Raises:
    ValueError: Naming `mesh.refresh_devices` when a process would keep no training device.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not refresh_per_process:
    return devices, []
  by_process: dict[int, list[jax.Device]] = {}
  for device in sorted(devices, key=lambda d: d.id):
    by_process.setdefault(device.process_index, []).append(device)
  train, refresh = [], []
  for process, own in sorted(by_process.items()):
    if refresh_per_process >= len(own):
      raise ValueError(f"mesh.refresh_devices={refresh_per_process} leaves no training device "
                       f"on process {process}, which has {len(own)}")
    train += own[:-refresh_per_process]
    if process == jax.process_index():
      refresh = own[-refresh_per_process:]
  return train, refresh


def training_devices(config: Any) -> list[jax.Device]:
  """All devices minus those `mesh.refresh_devices` sets aside."""
  return split_devices(refresh_devices_per_process(config))[0]


def refresh_mesh(config: Any) -> Mesh | None:
  """This process's refresh devices on a `data` mesh; None when `mesh.refresh_devices` is 0."""
  refresh = split_devices(refresh_devices_per_process(config))[1]
  return local_mesh(refresh) if refresh else None


def mesh_from_config(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`make_mesh(config.mesh.data, config.mesh.model)` over the training devices.

  Both axes default to (-1, 1); the devices default to all but those `mesh.refresh_devices`
  sets aside.
  """
  if devices is None:
    devices = training_devices(config)
  return make_mesh(_get(config, "mesh.data", -1), _get(config, "mesh.model", 1), devices)


def _encoder_field(encoder: Any, name: str) -> int:
  return getattr(encoder, name) if hasattr(encoder, name) else encoder[name]


def validate(config: Any, encoders: Any = None, num_devices: int | None = None) -> tuple[int, int]:
  """Rejects a config whose shapes do not fit the mesh, before anything is compiled.

  Reads `mesh.data` (default -1), `mesh.model` (default 1) and `train.batch_size` (the global
  batch: rows per step over all processes) from `config`, and `num_heads` and
  `intermediate_size` from each encoder.

  Args:
    config: A `ml_collections.ConfigDict` or nested dict with the keys above.
    encoders: One `EncoderConfig` (or a dict with `num_heads` and `intermediate_size`) or a
      sequence of them, e.g. both DPR towers. None: read them from `config.model`, if there.
    num_devices: Devices the mesh will span (default: every device but those
      `mesh.refresh_devices` sets aside).

  Returns:
    The resolved (data, model) mesh shape.

  Raises:
    ValueError: Listing every problem, each naming its config key and the numbers involved.
  """
  if num_devices is None:
    num_devices = len(training_devices(config))
  data, model = _resolve_mesh_shape(_get(config, "mesh.data", -1), _get(config, "mesh.model", 1),
                                    num_devices)
  problems = []
  batch_size = _get(config, "train.batch_size")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    problems.append(f"train.batch_size={batch_size!r} must be a positive integer")
  elif batch_size % data:
    problems.append(f"train.batch_size={batch_size} (the global batch) is not divisible by the "
                    f"data axis mesh.data={data}")
  if encoders is None:
    encoders = _get(config, "model", None)
    has_shape = encoders is not None and all(
        _get(encoders, name, None) is not None for name in ("num_heads", "intermediate_size"))
    encoders = [dict(num_heads=encoders["num_heads"],
                     intermediate_size=encoders["intermediate_size"])] if has_shape else []
  elif not isinstance(encoders, (list, tuple)):
    encoders = [encoders]
  for encoder in encoders:
    # Heads and the MLP width are the two parameter axes LOGICAL_AXIS_RULES puts on `model`.
    for field in ("num_heads", "intermediate_size"):
      size = _encoder_field(encoder, field)
      if size % model:
        problems.append(f"mesh.model={model} does not divide model.{field}={size}")
  if problems:
    raise ValueError("invalid config: " + "; ".join(dict.fromkeys(problems)))
  return data, model


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def param_shardings(abstract_params: Any, mesh: Mesh,
                     rules: Sequence[tuple[str, str | None]] = LOGICAL_AXIS_RULES) -> Any:
  """A NamedSharding per parameter, from its logical axis names and `rules`.

  Args:
    abstract_params: Boxed parameters (`nn.LogicallyPartitioned` leaves), usually from
      `jax.eval_shape(init)` so nothing is allocated. Unboxed leaves are replicated.
    mesh: The device mesh.
    rules: (logical name, mesh axis or None) pairs.

  Returns:
    A tree shaped like the *unboxed* parameters, with a NamedSharding at every leaf.

  Raises:
    ValueError: If a logical name has no rule (a typo would otherwise silently replicate),
      or a sharded dimension is not divisible by its mesh axis; both name the parameter.
  """
  known = {name for name, _ in rules}

  def one(path, leaf):
    if not _is_box(leaf):
      return NamedSharding(mesh, P())
    unknown = [name for name in leaf.names if name is not None and name not in known]
    if unknown:
      raise ValueError(f"parameter {_path_str(path)} has logical axes {unknown} with no entry "
                       "in the logical axis rules")
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
    for dim, (size, axis) in enumerate(zip(leaf.value.shape, spec)):
      axis_size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axis)])) if axis else 1
      if size % axis_size:
        raise ValueError(f"parameter {_path_str(path)}: dimension {dim} ({leaf.names[dim]}={size}) "
                         f"is not divisible by mesh axis {axis!r} of size {axis_size}")
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, abstract_params, is_leaf=_is_box)


def shard_params(params: Any, shardings: Any) -> Any:
  """Places (boxed or unboxed) parameters on the mesh; returns unboxed, sharded arrays.

  Every process must pass the same values. For models too large for one host, jit the
  initialiser with `out_shardings=shardings` instead, so no device ever holds a full copy.
  """
  return jax.device_put(nn.meta.unbox(params), shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data`, the rest replicated over `model`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (scalars, RNG keys, step counters)."""
  return NamedSharding(mesh, P())
