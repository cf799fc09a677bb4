"""retrieval_jax.tfevents: the CRC and framing of TFRecords, and events TensorBoard can read."""

import struct

import pytest

from retrieval_jax import tfevents


def test_crc32c_known_vectors():
  # RFC 3720 (iSCSI) B.4 check value, and the empty string.
  assert tfevents.crc32c(b"123456789") == 0xE3069283
  assert tfevents.crc32c(b"") == 0
  assert tfevents.crc32c(bytes(32)) == 0x8A9136AA


def test_tfrecord_framing():
  record = tfevents.tfrecord(b"hello")
  (length,) = struct.unpack("<Q", record[:8])
  assert length == 5 and record[12:17] == b"hello"
  assert struct.unpack("<I", record[8:12])[0] == tfevents.masked_crc32c(record[:8])
  assert struct.unpack("<I", record[17:])[0] == tfevents.masked_crc32c(b"hello")


def test_tensorboard_reads_scalars_and_text(tmp_path):
  pytest.importorskip("tensorboard")
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  writer = tfevents.EventFileWriter(tmp_path / "events.out.tfevents.1.test")
  writer.add_summary(3, tfevents.scalar_summary({"train/loss": 0.25, "dev/ndcg@10": 0.5}))
  writer.add_summary(2**40, tfevents.scalar_summary({"train/loss": -1.5}))
  writer.add_summary(0, tfevents.text_summary("config/text_summary", "| a | b |"))
  writer.close()
  accumulator = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  accumulator.Reload()
  loss = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
  assert loss == [(3, 0.25), (2**40, -1.5)]
  assert [(e.step, e.value) for e in accumulator.Scalars("dev/ndcg@10")] == [(3, 0.5)]
  text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
  assert text == b"| a | b |"
