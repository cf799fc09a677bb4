"""Writes a GGUF file's weights as float32 with llama.cpp's own dequantisation.

llama.cpp multiplies quantised weights (Q4_1, ...) with activations it quantises to 8 bits
on the fly, so its logits on a quantised file differ from a float32 model of the same
dequantised weights (ours, transformers'). Served from the float32 file (with a float32 KV
cache) llama.cpp computes what we compute; `eval/lamer_table.sh` compares both files.

  python eval/llama_cpp_f32.py --model=smollm2 --out=runs/smollm2-f32.gguf

Needs llama-cpp-python (`pip install -e ".[llama_cpp]"`).
"""

from __future__ import annotations

import ctypes
import pathlib
import sys

from absl import app, flags

from retrieval_jax.models import causal_lm

_ALL_F32 = 0  # llama.cpp's LLAMA_FTYPE_ALL_F32


def gguf_path(model: str) -> pathlib.Path:
  """The .gguf file of a packaged LM name or a path."""
  if model in causal_lm.PACKAGED_LMS:
    return causal_lm.packaged_gguf(model)
  return pathlib.Path(model)


def write_f32(source: pathlib.Path, out: pathlib.Path) -> None:
  """Dequantises `source` into `out` with llama.cpp (`llama_model_quantize` to ALL_F32)."""
  import llama_cpp  # pylint: disable=g-import-not-at-top
  params = llama_cpp.llama_model_quantize_default_params()
  params.ftype = _ALL_F32
  params.allow_requantize = True
  out.parent.mkdir(parents=True, exist_ok=True)
  partial = out.with_name(out.name + ".partial")
  status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(),
                                          ctypes.byref(params))
  if status != 0:
    raise RuntimeError(f"llama_model_quantize({source}) failed with status {status}")
  partial.rename(out)


def main(argv):
  del argv
  source = gguf_path(flags.FLAGS.model)
  if not source.exists():
    sys.exit(f"error: --model: {source} does not exist")
  write_f32(source, pathlib.Path(flags.FLAGS.out))
  print(f"wrote {flags.FLAGS.out}")


if __name__ == "__main__":
  # Defined here, not at import: other eval CLIs define `--model` and `--out` too.
  flags.DEFINE_string("model", "smollm2", "a packaged LM name or a .gguf file")
  flags.DEFINE_string("out", None, "the float32 .gguf file to write", required=True)
  app.run(main)
