"""Long documents as passages: ANCE's FirstP and MaxP (Xiong et al. 2020, arXiv 2007.00808).

A document is cut into consecutive, non-overlapping chunks of its tokens, each wrapped in the
tokenizer's special tokens ([CLS] ... [SEP] for BERT) and at most `max_length` long; only the
first `max_passages` are kept (ANCE: 4 passages of 512 tokens). With one passage this is plain
truncation (FirstP), token for token what `tokenize.tokenize` returns. Scoring a document by
the max over its passages (MaxP) lives in `retrieval_jax.index.maxp`. No JAX here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Any short text whose tokens are the same with and without special tokens around them.
_PROBE = "a"


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
  """The ids a tokenizer puts before and after a single sequence, e.g. ([CLS], [SEP]).

  Read from the tokenizer itself (its post-processor, through a probe text) rather than from
  `cls_token_id` / `sep_token_id`, so BERT ([CLS] x [SEP]) and RoBERTa (<s> x </s>) both work,
  and without `build_inputs_with_special_tokens`, which transformers 5 no longer has.

  Raises:
    ValueError: if the probe's tokens do not appear unchanged inside its wrapped form.
  """
  content = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
  wrapped = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
  for start in range(len(wrapped) - len(content) + 1):
    if content and wrapped[start:start + len(content)] == content:
      prefix, suffix = wrapped[:start], wrapped[start + len(content):]
      if len(prefix) + len(suffix) == tokenizer.num_special_tokens_to_add(pair=False):
        return list(prefix), list(suffix)
  raise ValueError(f"cannot tell the special tokens of {type(tokenizer).__name__}: "
                   f"{_PROBE!r} is {content} alone and {wrapped} with special tokens")


def split_documents(tokenizer, texts: Sequence[str], max_length: int,
                    max_passages: int) -> tuple[list[list[int]], np.ndarray]:
  """Token ids of the passages of every document, and the document of each passage.

  Args:
    tokenizer: A HF fast tokenizer (`tokenize.load_tokenizer`).
    texts: The documents (title + " " + text).
    max_length: Tokens per passage, special tokens included (ANCE: 512).
    max_passages: Passages kept per document; the rest of a longer document is dropped
      (ANCE: 4). 1 is FirstP: the same ids as `tokenize.tokenize(tokenizer, texts, max_length)`.

  Returns:
    token_ids: One unpadded list per passage, special tokens included, each at most
      `max_length` long; chunk j of a document holds its content tokens
      [j * c, (j + 1) * c) with c = max_length - the number of special tokens.
    doc_of: [num_passages] int64, the row in `texts` of each passage; non-decreasing, since a
      document's passages are consecutive and in order. Every document has at least one
      passage (an empty text gives the special tokens alone).

  Raises:
    ValueError: if max_length < 3, max_length leaves no room for content, or max_passages < 1.
    TypeError: if a text is not a string.
  """
  if max_length < 3:
    raise ValueError(f"max_length must be at least 3 (special tokens and content), got "
                     f"{max_length}")
  if max_passages < 1:
    raise ValueError(f"max_passages must be at least 1, got {max_passages}")
  bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
  if bad:
    raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
  prefix, suffix = special_tokens(tokenizer)
  chunk = max_length - len(prefix) - len(suffix)
  if chunk < 1:
    raise ValueError(f"max_length={max_length} leaves no room for content after "
                     f"{len(prefix) + len(suffix)} special tokens")
  if not texts:
    return [], np.zeros(0, np.int64)  # HF fast tokenizers raise IndexError on an empty batch.
  # One batched call, no truncation: the Rust tokenizer runs the whole corpus at once. verbose
  # off, since longer-than-the-model sequences are the point here, not a mistake to warn about.
  content = tokenizer(list(texts), add_special_tokens=False, truncation=False, padding=False,
                      return_attention_mask=False, return_token_type_ids=False,
                      verbose=False)["input_ids"]
  token_ids: list[list[int]] = []
  counts = np.empty(len(content), np.int64)
  for row, ids in enumerate(content):
    # max(len, 1): an empty document still gets one passage, so every document can be found.
    starts = range(0, max(len(ids), 1), chunk)[:max_passages]
    token_ids.extend(prefix + ids[start:start + chunk] + suffix for start in starts)
    counts[row] = len(starts)
  return token_ids, np.repeat(np.arange(len(content), dtype=np.int64), counts)


def passage_counts(doc_of: np.ndarray, num_docs: int) -> np.ndarray:
  """[num_docs] int64: how many passages each document has (from `split_documents`'s doc_of)."""
  doc_of = np.asarray(doc_of)
  if doc_of.ndim != 1:
    raise ValueError(f"doc_of must be 1-D, got shape {doc_of.shape}")
  if doc_of.size and (doc_of.min() < 0 or doc_of.max() >= num_docs):
    raise ValueError(f"doc_of holds rows outside [0, {num_docs}): "
                     f"{doc_of.min()}..{doc_of.max()}")
  return np.bincount(doc_of, minlength=num_docs).astype(np.int64)
