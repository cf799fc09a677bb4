"""Parsing of option values shared by configs and command lines."""

from __future__ import annotations

from typing import Any

AUTO_BOOL = ("auto", "true", "false")


def auto_bool(value: Any, name: str) -> bool | None:
  """`auto` -> None, `true`/`false` (any case, or a bool) -> the bool.

  Raises:
    ValueError: Naming `name` when `value` is none of them.
  """
  text = str(value).lower()
  if text not in AUTO_BOOL:
    raise ValueError(f"{name}={value!r} must be auto, true or false")
  return None if text == "auto" else text == "true"
