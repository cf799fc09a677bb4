"""ColBERT model directories: stanford ColBERT's layout, which PyLate loads too.

A directory as stanford-futuredata/ColBERT saves one (`colbert-ir/colbertv2.0`):

  config.json        the BERT config, `architectures: ["HF_ColBERT"]`
  model.safetensors  the encoder under `bert.`, the token head as `linear.weight` [dim, hidden]
  artifact.metadata  the ColBERTConfig as JSON: query_token_id ([unused0]), doc_token_id,
                     query_maxlen, doc_maxlen, dim, attend_to_mask_tokens, mask_punctuation, ...
  tokenizer files

PyLate (`pylate.models.ColBERT`) reads such a directory through its stanford path: the
`HF_ColBERT` architecture, `linear.weight` and the metadata's markers and lengths. PyLate's own
layout (sentence-transformers modules with a `1_Dense` module) is read too (`load`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import numpy as np
import safetensors.numpy

from retrieval_jax import files
from retrieval_jax.models import hf
from retrieval_jax.models.config import EncoderConfig

ARTIFACT_FILE = "artifact.metadata"
STANFORD_ARCHITECTURE = "HF_ColBERT"
LINEAR = "linear.weight"
_PYLATE_DENSE = "pylate.models.Dense.Dense"


@dataclasses.dataclass(frozen=True)
class ColbertSettings:
  """What a ColBERT directory says about its input format and head."""
  dim: int = 128
  query_marker: str = "[unused0]"
  doc_marker: str = "[unused1]"
  query_length: int = 32
  doc_max_length: int = 180
  attend_to_mask_tokens: bool = False
  mask_punctuation: bool = True


def settings_from_config(model_config: Any) -> ColbertSettings:
  """The settings of `config.model` (`token_dim` and `colbert.*`)."""
  colbert = model_config.colbert
  return ColbertSettings(
      dim=int(model_config.token_dim), query_marker=str(colbert.query_marker),
      doc_marker=str(colbert.doc_marker), query_length=int(colbert.query_length),
      doc_max_length=int(colbert.doc_max_length),
      attend_to_mask_tokens=bool(colbert.attend_to_mask_tokens),
      mask_punctuation=bool(colbert.mask_punctuation))


def _metadata(settings: ColbertSettings) -> dict:
  """stanford ColBERT's ColBERTConfig keys (what its and PyLate's loaders read)."""
  return {"query_token_id": settings.query_marker, "doc_token_id": settings.doc_marker,
          "query_token": "[Q]", "doc_token": "[D]", "query_maxlen": settings.query_length,
          "doc_maxlen": settings.doc_max_length, "dim": settings.dim,
          "attend_to_mask_tokens": settings.attend_to_mask_tokens,
          "mask_punctuation": settings.mask_punctuation, "similarity": "cosine",
          "interaction": "colbert", "written_by": "retrieval_jax"}


def save(directory: str | os.PathLike, config: EncoderConfig, params: Mapping[str, Any], *,
         tokenizer_dir: str | os.PathLike | None, settings: ColbertSettings) -> os.PathLike:
  """Writes a stanford-layout ColBERT directory (local or `gs://`).

  Args:
    directory: Created if needed; a remote one is staged locally and copied.
    config: The encoder config.
    params: `{"backbone": ..., "token_head": {"linear": {"kernel": [hidden, dim]}}}`.
    tokenizer_dir: The tokenizer files to copy.
    settings: The input format (markers, lengths, attention on [MASK], punctuation).
  """
  kernel = np.asarray(params["token_head"]["linear"]["kernel"], np.float32)
  if kernel.shape != (config.hidden_size, settings.dim):
    raise ValueError(f"token head kernel {kernel.shape} is not [hidden {config.hidden_size}, "
                     f"dim {settings.dim}]")
  with files.writing_dir(directory) as out:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"bert.{name}": value
               for name, value in hf.params_to_hf(params["backbone"], config).items()}
    if not config.with_pooler:
      # HF_ColBERT builds BertModel with a pooler; zeros rather than a random init.
      hidden = config.hidden_size
      tensors["bert.pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
      tensors["bert.pooler.dense.bias"] = np.zeros((hidden,), np.float32)
    tensors[LINEAR] = np.ascontiguousarray(kernel.T)
    safetensors.numpy.save_file(tensors, str(out / hf.SAFETENSORS_FILE),
                                metadata={"format": "pt"})
    hf_config = dict(config.to_hf(), architectures=[STANFORD_ARCHITECTURE])
    if not config.with_pooler:
      hf_config["add_pooling_layer"] = False
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    (out / ARTIFACT_FILE).write_text(json.dumps(_metadata(settings), indent=2))
    if tokenizer_dir is not None:
      for name in hf.TOKENIZER_FILES:
        if (pathlib.Path(tokenizer_dir) / name).exists():
          shutil.copy2(pathlib.Path(tokenizer_dir) / name, out / name)
  return files.as_path(directory)


def _pylate_dense_dir(model_dir: pathlib.Path) -> pathlib.Path | None:
  modules = model_dir / "modules.json"
  if not modules.exists():
    return None
  for module in json.loads(modules.read_text()):
    if module.get("type", "").startswith("pylate.models.Dense") or (
        module.get("type", "").endswith("Dense") and module.get("path")):
      return model_dir / module["path"]
  return None


def is_colbert_dir(path: str | os.PathLike) -> bool:
  """Whether a local directory holds a ColBERT model (stanford or PyLate layout)."""
  model_dir = pathlib.Path(path)
  if not (model_dir / "config.json").is_file():
    return False
  if (model_dir / ARTIFACT_FILE).exists():
    return True
  architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
  return STANFORD_ARCHITECTURE in architectures or _pylate_dense_dir(model_dir) is not None


# ColbertSettings field -> its key in stanford's artifact.metadata and in PyLate's
# config_sentence_transformers.json.
_STANFORD_KEYS = {"query_marker": "query_token_id", "doc_marker": "doc_token_id",
                  "query_length": "query_maxlen", "doc_max_length": "doc_maxlen",
                  "attend_to_mask_tokens": "attend_to_mask_tokens",
                  "mask_punctuation": "mask_punctuation"}
_PYLATE_KEYS = {"query_marker": "query_prefix", "doc_marker": "document_prefix",
                "query_length": "query_length", "doc_max_length": "document_length",
                "attend_to_mask_tokens": "attend_to_expansion_tokens",
                "mask_punctuation": "skiplist_words"}


def _settings(model_dir: pathlib.Path, dim: int) -> ColbertSettings:
  """The format `artifact.metadata` (stanford) or PyLate's config declares; what they leave
  out keeps ColBERT's defaults."""
  if (model_dir / ARTIFACT_FILE).exists():
    blob, keys = json.loads((model_dir / ARTIFACT_FILE).read_text()), _STANFORD_KEYS
  else:
    st_config = model_dir / hf.ST_CONFIG_FILE
    blob = json.loads(st_config.read_text()) if st_config.exists() else {}
    keys = _PYLATE_KEYS
  values = {"dim": dim}
  for name, key in keys.items():
    value = blob.get(key)
    if value is None or value == "":
      continue
    kind = type(getattr(ColbertSettings, name))
    # bool(...) also reads PyLate's skiplist (a list of words: non-empty skips punctuation).
    values[name] = kind(value) if kind is not bool else bool(value)
  return ColbertSettings(**values)


def _head_shape(model_dir: pathlib.Path) -> tuple[int, int] | None:
  """[dim, hidden] of the token head from safetensors headers (no tensor is read)."""
  dense_dir = _pylate_dense_dir(model_dir)
  for path in sorted(model_dir.glob("*.safetensors")) + (
      sorted(dense_dir.glob("*.safetensors")) if dense_dir is not None else []):
    with safetensors.safe_open(str(path), "numpy") as f:
      if LINEAR in f.keys():
        return tuple(f.get_slice(LINEAR).get_shape())
  return None


def describe(name_or_path: str | os.PathLike, **config_overrides
             ) -> tuple[EncoderConfig, ColbertSettings, pathlib.Path]:
  """(encoder config, settings, local directory) of a ColBERT directory, without its weights.

  Raises:
    ValueError: The directory has no ColBERT head.
  """
  model_dir = hf.resolve_model_dir(name_or_path)
  hf_config = json.loads((model_dir / "config.json").read_text())
  shape = _head_shape(model_dir)
  if shape is None:
    raise ValueError(f"{model_dir} is not a ColBERT directory: no {LINEAR} in its "
                     "safetensors and no PyLate Dense module")
  config_overrides.setdefault("with_pooler", hf.checkpoint_has_pooler(model_dir, hf_config))
  return (EncoderConfig.from_hf(hf_config, **config_overrides),
          _settings(model_dir, int(shape[0])), model_dir)


def load(name_or_path: str | os.PathLike, **config_overrides
         ) -> tuple[EncoderConfig, dict[str, Any], ColbertSettings, pathlib.Path]:
  """Reads a ColBERT directory (local, or a hub id through `hf.resolve_model_dir`).

  Returns:
    (encoder config, params `{"backbone", "token_head"}`, settings, the local directory).

  Raises:
    ValueError: The directory has no ColBERT head (`linear.weight`, or PyLate's Dense).
  """
  model_dir = hf.resolve_model_dir(name_or_path)
  hf_config = json.loads((model_dir / "config.json").read_text())
  tensors = hf.read_safetensors(model_dir)
  dense_dir = _pylate_dense_dir(model_dir)
  if LINEAR in tensors:
    weight = tensors.pop(LINEAR)
  elif dense_dir is not None:
    weight = safetensors.numpy.load_file(str(dense_dir / hf.SAFETENSORS_FILE))[LINEAR]
  else:
    raise ValueError(f"{model_dir} is not a ColBERT directory: no {LINEAR} in its "
                     "safetensors and no PyLate Dense module")
  config_overrides.setdefault("with_pooler", hf.checkpoint_has_pooler(model_dir, hf_config))
  if not config_overrides["with_pooler"]:
    tensors = {n: v for n, v in tensors.items() if ".pooler." not in f".{n}"}
  config = EncoderConfig.from_hf(hf_config, **config_overrides)
  params = {"backbone": hf.hf_to_params(tensors, config),
            "token_head": {"linear": {"kernel": np.ascontiguousarray(weight.T).astype(
                config.param_dtype)}}}
  return config, params, _settings(model_dir, int(weight.shape[0])), model_dir
