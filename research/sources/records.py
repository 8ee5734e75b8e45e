"""Sharded TFRecords of encoded images, streamed a shard at a time in bounded memory.

A record set is a folder: the shards `train-00000-of-00008.tfrecord`, ..., each a
sequence of tf.train.Examples of `image` (the encoded file, its bytes unchanged) and
`label` (int64), and `metadata.json`: the class names and, per shard, its file, its
count and its labels in record order. `write` makes one from any source or TFDS dataset
(scripts/make_tfrecords.py is its command line), dealing the examples to the shards
with a fixed seed, so that every shard holds a sample of every class.

Epoch e reads the shards in an order seeded by (seed, e), and each shard whole, in an
order seeded by (seed, e, shard). Memory holds one shard's encoded bytes (and what the
pipeline prefetches); resuming in the middle of an epoch reads only the shard the step
falls in.
"""

import contextlib
import json
import os
import re

import numpy as np
import tensorflow as tf

from research import files
from research.sources import DataError, Source
from research.sources.images import decode_image

METADATA = "metadata.json"
FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
_WRITE_SEED = 20241201  # fixed: a record set's order never depends on --seed


def read_metadata(directory):
  """The parsed metadata.json of a record set, on any file system TensorFlow reads
  (gs://, s3://, ...); OSError (FileNotFoundError if missing) or ValueError if not."""
  path = os.path.join(directory, METADATA)
  try:
    with tf.io.gfile.GFile(path) as f:
      metadata = json.load(f)
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f"no {path}") from None
  except tf.errors.OpError as e:
    raise OSError(e.message) from None
  for shard in metadata["shards"]:
    if len(shard["labels"]) != shard["count"]:
      raise ValueError(f"shard {shard['file']} lists {len(shard['labels'])} labels for "
                       f"{shard['count']} records")
  return metadata


class Records(Source):
  """The examples of shard files `paths` (of `counts` records, labelled `all_labels` in
  record order) for which `keep` is True; `index` is an example's record number."""

  def __init__(self, paths, counts, all_labels, image_size, keep=None):
    self.paths, self.counts = list(paths), np.asarray(counts, np.int64)
    self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
    self.all_labels, self.image_size = np.asarray(all_labels, np.int32), image_size
    self.keep = np.ones(len(self.all_labels), bool) if keep is None else keep
    self.labels = self.all_labels[self.keep]
    self.kept = np.array([self.keep[s:s + c].sum() for s, c in zip(self.starts, self.counts)])

  @classmethod
  def open(cls, directory, image_size):
    """(Records, class names) of the record set in `directory`; DataError if it is not
    one, or lacks shards its metadata lists."""
    try:
      metadata = read_metadata(directory)
    except FileNotFoundError as e:
      raise DataError(f"{directory!r} is not a record set (no {METADATA}); write one "
                      "with scripts/make_tfrecords.py --data_dir=FOLDER --output=DIR") from e
    except (OSError, ValueError, KeyError) as e:
      raise DataError(f"{directory!r}/{METADATA} is unreadable ({e}); write the "
                      "record set again") from e
    shards = metadata["shards"]
    paths = [os.path.join(directory, s["file"]) for s in shards]
    missing = [os.path.basename(p) for p in paths if not tf.io.gfile.exists(p)]
    if missing:
      raise DataError(f"{directory!r} lacks {len(missing)} of the {len(paths)} shards "
                      f"its {METADATA} lists: {', '.join(missing[:5])}"
                      f"{' ...' if len(missing) > 5 else ''}; copy them too, or write the "
                      "record set again")
    return cls(paths, [s["count"] for s in shards],
               np.concatenate([np.asarray(s["labels"], np.int32) for s in shards]),
               image_size), metadata["class_names"]

  def sample(self, count):
    """The first `count` examples: written dealt over the shards, a record set's order
    is already a sample of every class, and its first examples read the fewest shards."""
    return self.subset(np.arange(min(count, len(self))))

  def subset(self, indices):
    keep = np.zeros_like(self.keep)
    keep[np.flatnonzero(self.keep)[indices]] = True
    return Records(self.paths, self.counts, self.all_labels, self.image_size, keep)

  def epoch(self, seed, epoch, skip=0):
    order = tf.argsort(tf.random.stateless_uniform([len(self.paths)], seed=[seed, epoch]))
    if skip:  # Start at the shard holding example `skip` of the epoch.
      with tf.init_scope():
        order = order.numpy()
      ends = np.cumsum(self.kept[order])
      first = int(np.searchsorted(ends, skip, side="right"))
      skip -= int(ends[first - 1]) if first else 0
      order = order[first:]
    shards = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
    return shards.flat_map(lambda shard: self._shuffled_shard(seed, epoch, shard)).skip(skip)

  def in_order(self):
    shards = tf.data.Dataset.range(len(self.paths))
    return shards.flat_map(self._shard)

  def read(self, payloads):
    size = self.image_size
    return tf.map_fn(lambda encoded: decode_image(encoded, size), payloads,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
                     parallel_iterations=16)

  def encoded(self, payloads):
    return payloads

  def unreadable(self, error, payloads, during):
    """A record set's damage (a cut-off or vanished shard, a record that does not
    decode) as a DataError with TensorFlow's reason alone, without the traceback of the
    graph's ops and their names."""
    del payloads
    reason = " ".join(re.sub(r"\{\{function_node [^}]*\}\}|\[\[\{\{node [^]]*\]\]|"
                             r"\[Op:[^]]*\]", "", error.message.split("\n\n")[-1]).split())
    return DataError(f"the record set could not be read {during}: {reason}. Write it "
                     "again from readable images (scripts/make_tfrecords.py) and rerun the "
                     "same command (a run resumes from its last checkpoint)")

  def _shard(self, shard):
    """The kept examples of shard number `shard` (an int64 tensor), in record order."""
    start = tf.gather(tf.constant(self.starts), shard)
    keep = tf.constant(self.keep)

    def example(position, record):
      parsed = tf.io.parse_single_example(record, FEATURES)
      index = start + position
      return {"index": tf.cast(index, tf.int32), "label": tf.cast(parsed["label"], tf.int32),
              "payload": parsed["image"]}

    records = tf.data.TFRecordDataset(tf.gather(tf.constant(self.paths), shard))
    return records.enumerate().map(example).filter(lambda e: tf.gather(keep, e["index"]))

  def _shuffled_shard(self, seed, epoch, shard):
    whole = self._shard(shard).batch(int(self.counts.max()))
    seed = tf.random.experimental.stateless_fold_in(
        tf.cast(tf.stack([seed, epoch]), tf.int64), shard)

    def shuffle(examples):
      keys = tf.random.stateless_uniform([tf.shape(examples["index"])[0]], seed=seed)
      order = tf.argsort(keys)
      return {k: tf.gather(v, order) for k, v in examples.items()}

    return whole.map(shuffle).unbatch()


def write(directory, examples, class_names, num_shards, name="train", log=print):
  """Writes `examples` (a dataset of {"encoded", "label"}, see `examples_of`) as a
  record set of `num_shards` shards in `directory`: of every `num_shards` examples in a
  row, one goes to each shard, in an order drawn with a fixed seed, so a shard is a
  sample of every class even when the examples come sorted by class. One pass, bounded
  memory; metadata.json goes last, so a set without it is unfinished."""
  if num_shards < 1:
    raise ValueError(f"--shards={num_shards} must be >= 1")
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(_WRITE_SEED)
  names = [f"{name}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]
  labels = [[] for _ in names]
  with contextlib.ExitStack() as stack:
    # Entered after their files: each writer closes before its file is renamed.
    tmps = [stack.enter_context(files.replacing(os.path.join(directory, n))) for n in names]
    writers = [stack.enter_context(tf.io.TFRecordWriter(t)) for t in tmps]
    position, order = 0, []
    for batch in examples.batch(256).as_numpy_iterator():
      for encoded, label in zip(batch["encoded"], batch["label"]):
        if not order:
          order = list(rng.permutation(num_shards))
        shard = order.pop()
        writers[shard].write(example(encoded, label).SerializeToString())
        labels[shard].append(int(label))
        position += 1
      if position % 10240 < len(batch["label"]):
        log(f"{position} examples written")
    if min(len(l) for l in labels) == 0:
      raise ValueError(f"--shards={num_shards} is more than the {position} examples")
  shards = [{"file": n, "count": len(l), "labels": l} for n, l in zip(names, labels)]
  files.write_json(os.path.join(directory, METADATA),
                   {"format": 1, "class_names": list(class_names), "shards": shards})
  log(f"wrote {position} examples in {num_shards} shards to {directory}")
  return shards


def examples_of(source):
  """The {"encoded", "label"} examples of any research.sources kind, in index order."""
  return source.in_order().batch(256).map(
      lambda b: {"encoded": source.encoded(b["payload"]), "label": b["label"]}).unbatch()


def example(encoded, label):
  """One record: the encoded image's bytes and its label."""
  return tf.train.Example(features=tf.train.Features(feature={
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}))
