"""Data sources: streamed folders, record sets, TFDS, and input sharded by worker."""

import json
import logging
import os
import re
import shutil

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from research import data, evaluation, loop
from research.config import Config
from research.sources import images, records
from research.sources import cache
from research.sources.cache import open_folder
from research.sources.datasets import synthetic
from research.sources.memory import Arrays
from scripts import make_tfrecords
from tests.test_data import make_folder

TRAIN = dict(batch_size=4, num_classes=3, augment="crop(padding=2),flip,cutout(size=4)",
             seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = make_folder(tmp_path_factory.mktemp("sources") / "images", per_class=7)
  return str(root)


@pytest.fixture(scope="module")
def record_set(folder, tmp_path_factory):
  output = str(tmp_path_factory.mktemp("records") / "set")
  make_tfrecords.make("folder", folder, output, shards=3, log=lambda _: None)
  return output


def _open(folder, cache, tmp_path):
  config = Config(dataset="folder", data_dir=folder, image_size=16, data_cache=cache,
                  cache_dir=str(tmp_path / "cache"))
  return open_folder(folder, config)[0]


def _train(source, train_steps, start=0, ctx=None, **overrides):
  config = Config(train_steps=train_steps, **{**TRAIN, **overrides})
  return [{k: v.numpy() for k, v in b.items()}
          for b in data.train_dataset(source, config, start, ctx)]


def _assert_same(batches, others):
  assert len(batches) == len(others)
  for batch, other in zip(batches, others):
    assert batch.keys() == other.keys()
    for key in batch:
      np.testing.assert_array_equal(batch[key], other[key], err_msg=key)


def test_a_streamed_folder_gives_exactly_the_batches_of_memory(folder, tmp_path):
  streamed, in_memory = _open(folder, "none", tmp_path), _open(folder, "memory", tmp_path)
  assert isinstance(streamed, images.Files) and isinstance(in_memory, Arrays)
  _assert_same(_train(streamed, 12), _train(in_memory, 12))
  evaluated = [list(data.eval_dataset(s, 4, 3, None)) for s in (streamed, in_memory)]
  _assert_same(*[[{k: v.numpy() for k, v in b.items()} for b in e] for e in evaluated])
  np.testing.assert_array_equal(streamed.head(5), in_memory.head(5))


def test_auto_streams_a_folder_that_would_not_fit_in_memory(folder, tmp_path, monkeypatch,
                                                           caplog):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(cache, "available_memory", lambda: 10 ** 9)
  assert isinstance(_open(folder, "auto", tmp_path), Arrays)
  monkeypatch.setattr(cache, "available_memory", lambda: 4 * 16 * 16 * 3 * 20)
  assert isinstance(_open(folder, "auto", tmp_path), images.Files)
  assert "read from the files as training goes (--data_cache=auto)" in caplog.text


def test_a_streamed_folder_names_or_skips_unreadable_files(tmp_path):
  root = make_folder(tmp_path / "images")
  (root / "bee" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 no end marker")
  (root / "ant" / "empty.png").write_bytes(b"")
  with pytest.raises(data.DataError, match="2 image file.*cut.jpg"):
    _open(str(root), "none", tmp_path)
  config = Config(dataset="folder", data_dir=str(root), image_size=16, data_cache="none",
                  skip_bad_images=True)
  source, _ = open_folder(str(root), config)
  assert len(source) == 9 and not any("cut.jpg" in p for p in source.paths)


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_skipping_an_unreadable_file_moves_no_other_across_the_validation_split(tmp_path,
                                                                                cache):
  """The split is drawn over the folder's whole listing: a file that becomes unreadable
  (and --skip_bad_images on, say at a resume) leaves its side; no other file moves."""
  root = tmp_path / "images"
  for c, name in enumerate(["a", "b"]):
    (root / name).mkdir(parents=True)
    for i in range(12):  # Each image's pixels are its id.
      pixels = np.full((4, 4, 3), 20 * c + i, np.uint8)
      Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
  config = Config(dataset="folder", data_dir=str(root), image_size=4, data_cache=cache,
                  skip_bad_images=True, cache_dir=str(tmp_path / "cache"))

  def sides():
    source, _ = open_folder(str(root), config)
    return [set(part.head(len(part))[:, 0, 0, 0].tolist())
            for part in data.split_validation(source, 0.25)]
  train, val = sides()
  assert len(val) == 6 and len(train) == 18
  bad = sorted(val)[1]  # One validation image, then one training image, goes bad.
  for lost in (bad, sorted(train)[4]):
    (root / "ab"[lost // 20] / f"{lost % 20:02d}.png").write_bytes(b"not a png")
    train, val = train - {lost}, val - {lost}
    assert sides() == [train, val]


def test_a_streamed_folder_keeps_the_files_a_decoded_one_keeps(tmp_path):
  root = make_folder(tmp_path / "images")
  [jpeg, png] = [next(p for p in sorted((root / "cat").iterdir()) if p.suffix == suffix)
                 for suffix in (".jpg", ".png")]
  jpeg.write_bytes(jpeg.read_bytes() + bytes(200))  # After the end marker: still readable.
  png.write_bytes(png.read_bytes()[:-40])  # Cut off: unreadable.
  assert images.looks_readable(str(jpeg)) and not images.looks_readable(str(png))
  # WebP, which decode_image reads, whatever the file's name says.
  pixels = np.full((8, 8, 3), 200, np.uint8)
  for name in ("w.webp", "webp_named.jpg"):
    Image.fromarray(pixels).save(root / "ant" / name, "WEBP", lossless=True)
  assert images.looks_readable(str(root / "ant" / "webp_named.jpg"))
  # A 1-bit BMP: its header is whole, but TensorFlow does not decode it.
  Image.fromarray(pixels[..., 0] > 100).save(root / "bee" / "mono.bmp")
  assert not images.looks_readable(str(root / "bee" / "mono.bmp"))
  config = Config(dataset="folder", data_dir=str(root), image_size=16,
                  skip_bad_images=True, cache_dir=str(tmp_path / "cache"))
  streamed, _ = open_folder(str(root), config.replace(data_cache="none"))
  in_memory, _ = open_folder(str(root), config.replace(data_cache="memory"))
  assert len(streamed) == len(in_memory) == 10
  np.testing.assert_array_equal(streamed.head(10), in_memory.head(10))


def test_whole_webp_and_bmp_files_are_vouched_for_by_their_headers(tmp_path, monkeypatch):
  """Without decoding: a streamed folder of a million WebPs starts in seconds."""
  pixels = np.full((8, 8, 3), 200, np.uint8)
  for name, kind in (("w.webp", "WEBP"), ("b.bmp", "BMP")):
    Image.fromarray(pixels).save(tmp_path / name, kind)
  webp, bmp = str(tmp_path / "w.webp"), str(tmp_path / "b.bmp")
  with monkeypatch.context() as patched:
    patched.setattr(images, "_decodes", lambda path: False)
    assert images.looks_readable(webp) and images.looks_readable(bmp)
  with open(webp, "ab") as f:  # No longer the size its header says: decoded to decide.
    f.write(b"x")
  assert images.looks_readable(webp)
  whole = open(webp, "rb").read()
  open(webp, "wb").write(whole[:-31])
  assert not images.looks_readable(webp)


def test_an_8_bit_bmp_decodes_to_its_colours_not_its_palette_indices(tmp_path):
  pixels = np.zeros((6, 6, 3), np.uint8)
  pixels[:2], pixels[2:4], pixels[4:], pixels[:, 5] = (250, 10, 0), (0, 120, 30), (5, 5, 255), 77
  Image.fromarray(pixels).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "palette.bmp")
  Image.fromarray(pixels[..., 1]).save(tmp_path / "grey.bmp")  # 8-bit too, a grey table
  Image.fromarray(pixels).save(tmp_path / "rgb.bmp")  # 24-bit: no table
  # At the images' own size: no resampling.
  decode = lambda name: images.decode_image(tf.io.read_file(str(tmp_path / name)), 6).numpy()
  np.testing.assert_array_equal(decode("palette.bmp"), pixels)
  np.testing.assert_array_equal(decode("grey.bmp")[..., 0], pixels[..., 1])
  np.testing.assert_array_equal(decode("rgb.bmp"), pixels)


def test_a_record_set_holds_the_files_unchanged_in_balanced_shards(folder, record_set,
                                                                    tmp_path):
  metadata = records.read_metadata(record_set)
  assert metadata["class_names"] == ["ant", "bee", "cat"]
  assert [s["count"] for s in metadata["shards"]] == [7, 7, 7]
  assert all(set(s["labels"]) == {0, 1, 2} for s in metadata["shards"])
  source, _ = records.Records.open(record_set, 16)
  streamed = _open(folder, "none", tmp_path)
  # The same images (bytes stored unchanged, decoded alike) under other indices.
  by_bytes = {open(p, "rb").read(): i for i, p in enumerate(streamed.paths)}
  examples = list(source.in_order().as_numpy_iterator())
  matched = [by_bytes[e["payload"]] for e in examples]
  assert sorted(matched) == list(range(21))
  np.testing.assert_array_equal([e["label"] for e in examples], streamed.labels[matched])
  np.testing.assert_array_equal(source.head(21), streamed.head(21)[matched])


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_sample_of_a_folder_spans_its_classes(folder, record_set, tmp_path, cache):
  """What the data-dependent initialization (airbench's whitening) and the figures read:
  a folder is in class order, so its first examples are one class."""
  source = _open(folder, cache, tmp_path)
  assert set(source.labels[:6]) == {0}
  sample = source.sample(6)
  assert len(sample) == 6 and len(set(sample.labels)) > 1
  chosen = [int(np.flatnonzero((source.head(21) == image).all(axis=(1, 2, 3)))[0])
            for image in sample.head(6)]
  assert chosen == sorted(chosen)  # In order: a record set's reading stays sequential.
  np.testing.assert_array_equal(source.labels[chosen], sample.labels)
  assert source.sample(21) is source
  # A record set is dealt over its shards when written: its first examples are a sample.
  records_source, _ = records.Records.open(record_set, 16)
  np.testing.assert_array_equal(records_source.sample(6).head(6), records_source.head(6))
  assert len(set(records_source.sample(6).labels)) > 1


def test_records_resume_at_any_step_exactly_and_visit_each_example_once(record_set):
  source, _ = records.Records.open(record_set, 16)
  train, val = data.split_validation(source, 0.2)
  full = _train(train, 12)  # 16 examples, 4 steps an epoch, shards of 5-6 kept ones.
  for start in (1, 3, 4, 6, 9):  # Mid-shard, across shards, at and after epoch ends.
    _assert_same(_train(train, 12, start), full[start:])
  held_out = set(np.concatenate([b["index"] for b in
                                 _train(val, 1, batch_size=len(val))]).tolist())
  for epoch in range(3):
    seen = np.concatenate([b["index"] for b in full[4 * epoch:4 * epoch + 4]])
    assert len(set(seen)) == 16 and not set(seen) & held_out
  other_epoch = [np.concatenate([b["index"] for b in full[e * 4:e * 4 + 4]]) for e in (0, 1)]
  assert not np.array_equal(*other_epoch)


def test_a_record_set_trains_from_the_command_line_flags(record_set, tmp_path):
  config = Config(dataset="tfrecord", data_dir=record_set, image_size=16, val_split=0.25)
  loaded = data.load(config.validate())
  assert (len(loaded.train), len(loaded.eval), loaded.class_names) == (15, 6,
                                                                       ["ant", "bee", "cat"])
  with pytest.raises(data.DataError, match="--data_service needs data read by index"):
    _train(loaded.train, 1, data_service="grpc://localhost:1")
  with pytest.raises(data.DataError, match="not a record set.*make_tfrecords"):
    data.load(config.replace(data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="exists and is not empty"):
    make_tfrecords.make("folder", record_set, record_set)


def test_the_validation_split_of_a_record_set_run_is_not_taken_from_a_folder(
    folder, record_set, make_config, tmp_path):
  # Records are split in their shuffled order, not in the folder's sorted one.
  config = make_config(dataset="tfrecord", data_dir=record_set, val_split=0.25,
                       batch_size=4, train_steps=1, eval_every=1)
  loop.train(config)
  cache = str(tmp_path / "cache")
  with pytest.raises(data.DataError, match="trained on --dataset=tfrecord, whose held-out"):
    evaluation.score_folder(config.model_dir, folder, cache_dir=cache, split="validation")
  assert evaluation.score_folder(config.model_dir, folder, cache_dir=cache)["examples"] == 21


def test_skip_bad_images_holds_for_eval_folders_and_for_scoring_the_run(folder, make_config,
                                                                        tmp_path):
  root = tmp_path / "images"
  shutil.copytree(folder, root)
  (root / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
  cache = str(tmp_path / "cache")
  config = make_config(dataset="folder", data_dir=str(root), val_split=0.25, batch_size=4,
                       train_steps=1, eval_every=1, skip_bad_images=True, cache_dir=cache)
  held_out = loop.train(config).final_eval["examples"]
  # The run's held-out split, re-derived as the run split it: without the broken file.
  assert evaluation.score_folder(config.model_dir, str(root), cache_dir=cache,
                                 split="validation")["examples"] == held_out
  with pytest.raises(data.DataError, match="broken.jpg"):
    evaluation.score_folder(config.model_dir, str(root), cache_dir=cache)
  assert evaluation.score_folder(config.model_dir, str(root), cache_dir=cache,
                                 skip_bad_images=True)["examples"] == 21
  # A last run on every image, evaluated on a folder with a broken file of its own.
  whole = config.replace(val_split=0.0, eval_data_dir=str(root))
  assert len(data.load(whole).eval) == 21
  with pytest.raises(data.DataError, match="broken.jpg"):
    data.load(whole.replace(skip_bad_images=False))


def test_a_damaged_record_set_stops_with_an_error_naming_what_is_wrong(record_set, make_config,
                                                                      tmp_path):
  damaged = tmp_path / "set"
  shutil.copytree(record_set, damaged)
  shard = damaged / "train-00001-of-00003.tfrecord"
  shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])  # A cut-off copy.
  config = make_config(dataset="tfrecord", data_dir=str(damaged), val_split=0.0,
                       batch_size=4, train_steps=6, eval_every=6)
  with pytest.raises(data.DataError, match="record set could not be read in training.*"
                                           "truncated record.*make_tfrecords"):
    loop.train(config)
  shard.unlink()
  with pytest.raises(data.DataError, match="lacks 1 of the 3 shards its metadata.json "
                                           "lists: train-00001-of-00003.tfrecord"):
    data.load(config)


class CountingArrays(Arrays):
  """Arrays that record how many examples each traced `read` asks for."""

  def read(self, payloads):
    self.reads.append(payloads.shape[0])
    return super().read(payloads)


@pytest.mark.parametrize("augment", ["crop(padding=2),flip,label_noise(rate=0.5)", "mixup"])
def test_each_worker_builds_its_own_share_of_the_batch(augment):
  split, _ = synthetic(48, 8, 3)
  source = CountingArrays(split.images, split.labels)
  source.reads = []
  one_machine = tf.distribute.InputContext(1, 0, 2)  # 2 replicas, one pipeline.
  replicas = _train(source, 5, ctx=one_machine, batch_size=8, augment=augment)
  per_worker = []
  for worker in range(2):  # 2 workers, one replica each: the same replica batches.
    context = tf.distribute.InputContext(2, worker, 2)
    per_worker.append(_train(source, 5, ctx=context, batch_size=8, augment=augment))
  _assert_same(replicas[0::2], per_worker[0])
  _assert_same(replicas[1::2], per_worker[1])
  whole = "mixup" in augment  # It mixes examples of the whole batch: each builds all.
  assert source.reads == [8] + [8 if whole else 4] * 2


def test_tfds_by_name_from_its_mock_data_and_unprepared_offline(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = Config(dataset="tfds:cifar10", image_size=16, val_split=0.25)
  with tfds.testing.mock_data(num_examples=24):
    loaded = data.load(config.validate())
    assert len(loaded.train) + len(loaded.eval) == 24 and 3 <= len(loaded.eval) <= 9
    assert loaded.train.images.shape[1:] == (16, 16, 3) and len(loaded.class_names) == 10
    output = str(tmp_path / "set")
    assert make_tfrecords.make("tfds:cifar10", "", output, shards=2,
                               log=lambda _: None) == (24, 2)
    with open(os.path.join(output, "metadata.json")) as f:
      assert json.load(f)["class_names"] == loaded.class_names
  with pytest.raises(data.DataError, match="not prepared in .*tfds build cifar10"):
    data.load(config.replace(data_dir=str(tmp_path / "nothing")))


@pytest.mark.parametrize("block", [data.SERVED_BLOCK, 2])
def test_a_data_service_makes_every_batch_exactly_once(monkeypatch, block):
  # Block 2: 5 steps an epoch in blocks of 2, 2 and 1; the run starts inside a block.
  monkeypatch.setattr(data, "SERVED_BLOCK", block)
  service = tf.data.experimental.service
  dispatcher = service.DispatchServer()
  address = dispatcher.target.split("://")[1]
  workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address))
             for _ in range(2)]
  split, _ = synthetic(40, 8, 3)
  local = _train(split, 12, start=3)
  served = _train(split, 12, start=3, data_service=dispatcher.target)
  # The workers race, so the order may differ; each batch is exactly the local one.
  key = lambda batch: batch["index"].tobytes()
  _assert_same(sorted(served, key=key), sorted(local, key=key))
  del workers


def test_a_preempted_run_resumes_bitwise_from_a_record_set(record_set, make_config, caplog):
  # A streamed folder gives the in-memory batches (above), whose resume test_steps.py and
  # test_fault_tolerance.py check; the preemption itself (SIGTERM, a checkpoint of the
  # step it came at), test_fault_tolerance.py and test_interrupts.py.
  config = make_config(dataset="tfrecord", data_dir=record_set, val_split=0.2, batch_size=4,
                       train_steps=12, checkpoint_every=5, eval_every=12, deterministic=True)
  reference = loop.train(config)
  whole = keras.models.load_model(os.path.join(config.model_dir, "model.keras")).get_weights()
  # Back to the checkpoint of step 5, as a preemption there leaves the run: 4 steps an
  # epoch, so inside the second epoch and inside a shard. One run fewer than stopping one.
  directory = os.path.join(config.model_dir, "checkpoints")
  for path in [p for p in os.listdir(directory) if not p.startswith("ckpt-5.")]:
    os.remove(os.path.join(directory, path))
  caplog.set_level(logging.INFO)
  resumed = loop.train(config)
  assert "resumed at step 5 from" in caplog.text  # It went on from the step of the stop,
  assert resumed.eval_history[-1] == reference.eval_history[-1]  # to the same end.
  resumed_weights = keras.models.load_model(
      os.path.join(config.model_dir, "model.keras")).get_weights()
  for a, b in zip(resumed_weights, whole):
    np.testing.assert_array_equal(a, b)


def _corrupt_middle(path):
  """Keeps the signature and the end marker that the up-front check looks at."""
  encoded = bytearray(open(path, "rb").read())
  encoded[200:-10] = bytes(b ^ 0x5A for b in encoded[200:-10])
  open(path, "wb").write(bytes(encoded))


# The evaluation at step N runs before step N's checkpoint is saved.
@pytest.mark.parametrize("split, during, unsaved", [(0, "in training after step", 0),
                                                   (1, "evaluating at step", 1)])
def test_a_streamed_file_that_fails_mid_run_is_named(split, during, unsaved, tmp_path,
                                                     make_config):
  root = make_folder(tmp_path / "images", per_class=8)
  config = make_config(dataset="folder", data_dir=str(root), data_cache="none",
                       val_split=0.25, batch_size=6, train_steps=6,
                       checkpoint_every=3, eval_every=6)
  source, _ = open_folder(str(root), config)
  jpegs = [p for p in data.split_validation(source, 0.25)[split].paths
           if p.endswith(".jpg") and os.path.getsize(p) > 1000]
  assert images.looks_readable(jpegs[0])
  _corrupt_middle(jpegs[0])
  assert images.looks_readable(jpegs[0])  # Only decoding finds it.
  with pytest.raises(data.DataError, match=rf"1 image file\(s\) could not be read or "
                                           rf"decoded {during} (\d+): {jpegs[0]}\. Replace"
                      ) as error:
    loop.train(config)
  # Nothing lost: the checkpoints due before the failure were saved.
  last_due = (int(re.search(rf"{during} (\d+)", str(error.value)).group(1)) - unsaved) // 3 * 3
  saved = tf.train.get_checkpoint_state(os.path.join(config.model_dir, "checkpoints"))
  assert (saved.model_checkpoint_path.endswith(f"ckpt-{last_due}") if last_due
          else saved is None)


def test_a_record_set_trains_from_a_file_system_tensorflow_reads(record_set, make_config):
  """gs:// or s3:// as TensorFlow's in-memory ram:// stands in for them here."""
  remote = "ram://sets/train_set"
  tf.io.gfile.makedirs(remote)
  for name in os.listdir(record_set):
    tf.io.gfile.copy(os.path.join(record_set, name), f"{remote}/{name}", overwrite=True)
  config = make_config(dataset="tfrecord", data_dir=remote, val_split=0.25, batch_size=4,
                       train_steps=3, eval_every=3)
  source, names = records.Records.open(remote, 16)
  local, _ = records.Records.open(record_set, 16)
  assert names == ["ant", "bee", "cat"]
  np.testing.assert_array_equal(source.head(21), local.head(21))
  assert np.isfinite(loop.train(config).train_history[-1][1]["loss"])
  with pytest.raises(ValueError, match="write the record set to a local directory"):
    make_tfrecords.make("folder", record_set, "ram://sets/new")


def test_workers_that_read_every_shard_say_so():
  shards = records.Records(["a.tfrecord", "b.tfrecord"], [2, 2], [0, 1, 0, 1], 16)
  assert data.shard_reading(shards, 2) == (
      "each of the 2 workers reads all 2 shards of the record set (a step's examples come "
      "from the shards in one sequence) and decodes only its share")
  assert data.shard_reading(shards, 1) is None
  assert data.shard_reading(synthetic(8, 16, 2)[0], 2) is None  # Read by index.
