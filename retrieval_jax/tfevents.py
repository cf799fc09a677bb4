"""TensorBoard event files written without TensorFlow, tensorboardX or protobuf.

An event file is a sequence of TFRecords, each holding one serialised `tensorboard.Event`
protocol buffer. The handful of messages the training loop writes (scalars, one text summary)
are encoded by hand below: they are a few varints and length-delimited fields. Doing it here
keeps the library's dependencies small (tensorboardX imports torch whenever torch is
installed) and every write synchronous. `tests/test_metric_writer.py` reads the files back
with TensorBoard's own `EventAccumulator`.

Proto fields used (tensorboard/compat/proto): Event{1 wall_time double, 2 step int64,
3 file_version string, 5 summary}; Summary{1 repeated value}; Summary.Value{1 tag string,
2 simple_value float, 8 tensor, 9 metadata}; SummaryMetadata{1 plugin_data{1 plugin_name}};
TensorProto{1 dtype enum (7 = DT_STRING), 2 tensor_shape, 8 repeated string_val}.
"""

from __future__ import annotations

import os
import struct
import time
from typing import BinaryIO, Mapping

_DT_STRING = 7


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, as TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
  if value < 0:
    value += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
  out = bytearray()
  while True:
    bits, value = value & 0x7F, value >> 7
    out.append(bits | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def _event(step: int | None = None, summary: bytes | None = None,
           file_version: str | None = None, wall_time: float | None = None) -> bytes:
  out = _key(1, 1) + struct.pack("<d", time.time() if wall_time is None else wall_time)
  if step is not None:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if summary is not None:
    out += _bytes_field(5, summary)
  return out


def scalar_summary(values: Mapping[str, float]) -> bytes:
  """A Summary with one `simple_value` per tag (float32 on disk, as TensorBoard stores it)."""
  return b"".join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
      for tag, value in values.items())


def text_summary(tag: str, text: str) -> bytes:
  """A Summary with one string tensor for TensorBoard's text plugin."""
  tensor = _key(1, 0) + _varint(_DT_STRING) + _bytes_field(2, b"") + _bytes_field(
      8, text.encode())
  metadata = _bytes_field(1, _bytes_field(1, b"text"))
  return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(8, tensor)
                      + _bytes_field(9, metadata))


class EventFileWriter:
  """Appends events to a new file `path`; starts with the file-version event readers expect."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._file: BinaryIO = open(self.path, "wb")
    self._file.write(tfrecord(_event(file_version="brain.Event:2")))

  def add_summary(self, step: int, summary: bytes) -> None:
    self._file.write(tfrecord(_event(step=step, summary=summary)))

  def flush(self) -> None:
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    if not self._file.closed:
      self.flush()
      self._file.close()
