"""Datasets by name, and the sources they open: what the pipelines read.

A dataset kind is registered in DATASETS, like a model: `--dataset=NAME` or
`--dataset=NAME(key=value, ...)`, or `NAME:VALUE` for its first parameter
(`tfds:mnist` is `tfds(name='mnist')`). Its builder takes the run's config and the
item's arguments and returns a `Dataset`, checking what it can without reading any data
(a ValueError names what to do); `open()` then gives the sources:

    @DATASETS.register("stripes")
    class Stripes(Dataset):  # its docstring's first line: its line in --list=dataset
      def __init__(self, config, num_examples=512):
        super().__init__(config)
      def class_names(self):  # known without reading an image, else None
      def open(self):         # (train source, test source or None, class names)

The built-in kinds are in research/sources/datasets.py; a plugin registers more.

A source is a sequence of labelled examples. It knows its `labels` up front (int32 [N],
so validation splits and class counts never touch an image) and streams an epoch's
examples in that epoch's order as dicts of `index` (the example's id), `label` and
`payload`: whatever is cheap to carry until the pipeline has cut the global batch to its
own replicas' share, when `read(payloads)` makes the uint8 images. A payload is an
example id for arrays in memory and image files, encoded bytes for records.

    len(source), source.labels, source.image_size
    source.epoch(seed, epoch, skip)  the examples of epoch `epoch` from the `skip`th on
    source.in_order()                every example once, in index order (evaluation)
    source.read(payloads)            uint8 [b, S, S, 3]
    source.encoded(payloads)         string [b]: the images encoded (records/write)
    source.subset(indices)           the same kind of source over those examples
    source.head(count)               numpy uint8 [count, S, S, 3]: the first images
    source.sample(count)             a source of `count` examples spread over this one

An epoch's order is a function of (seed, epoch) alone and `skip` costs at most one
block's reading, so a run resumed at any step sees exactly the batches it would have.
`Indexed` is the base of the random-access kinds (`memory.Arrays`, `images.Files`);
`records.Records` reads sequential shards. A source that can say which of its
examples TensorFlow failed to read defines `unreadable` (see `naming_bad_files`).
"""

import contextlib
import os

import numpy as np
import tensorflow as tf

from research.registry import Registry


class DataError(ValueError):
  """Missing, empty or unreadable data; the message says what to do."""


class Datasets(Registry):
  """The registry of dataset kinds; it also reads `NAME:VALUE` as NAME's first
  parameter set to the text VALUE."""

  def parse(self, text):
    name, colon, value = text.partition(":")
    name = name.strip()
    if colon and name.isidentifier() and name in self and self.parameters(name):
      text = f"{name}({next(iter(self.parameters(name)))}={value.strip()!r})"
    return super().parse(text)


DATASETS = Datasets("dataset")


class Dataset:
  """A dataset kind as a run names it (see the module docstring). The checks of the
  run's use of it happen at construction, before any data is read."""

  # Whether a run may train on all of it (--val_split=0) with no test split, evaluating
  # on --eval_data_dir or not at all: the user's own images (a folder, a record set).
  trains_whole = False
  # Whether `open` gives a test split: True, False, or None when only opening tells.
  has_test = True

  def __init__(self, config):
    self.config = config
    if config.eval_data_dir and (not self.trains_whole or config.val_split):
      raise ValueError("--eval_data_dir is for --dataset=folder or tfrecord with "
                       "--val_split=0 (it replaces the validation split)")
    if self.has_test is False and not self.trains_whole and config.val_split == 0:
      raise ValueError(f"{config.dataset} has no test split; set --val_split > 0")

  def class_names(self):
    """The class names where they are known without reading an image, else None."""
    return None

  def open(self):
    """(train source, test source or None, class names)."""
    raise NotImplementedError


def needs_data_dir(config, what, remote=False):
  """Raises ValueError unless --data_dir names a directory (`what`: what it holds);
  with `remote`, a path on a file system TensorFlow reads (gs://...) is checked there."""
  if not config.data_dir:
    raise ValueError(f"{config.dataset} needs --data_dir=DIR ({what})")
  if not (remote and "://" in config.data_dir) and not os.path.isdir(config.data_dir):
    raise ValueError(f"--data_dir {config.data_dir!r} is not a directory")


@contextlib.contextmanager
def naming_bad_files(source, payloads, during):
  """Turns TensorFlow's error for data that cannot be read, which names no file, into
  the DataError of `source.unreadable` (the files among `payloads()`, the example ids
  being read, that fail; a record set's reason); `during`: what was running."""
  try:
    yield
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.DataLossError) as e:
    error = source.unreadable(e, payloads, during)
    if error is None:
      raise
    raise error from None


class Source:
  """The interface; see the module docstring."""

  labels: np.ndarray
  image_size: int
  # (labels, readable) of the folder listing this source was read from, when unreadable
  # files were left out of it (--skip_bad_images): the validation split is drawn over
  # the whole listing, so that skipping a file moves no other file to the other side.
  listing = None
  # A folder's files, relative to it, in the order listed (the split is drawn over it).
  listed_files = None

  def __len__(self):
    return len(self.labels)

  def epoch(self, seed, epoch, skip=0):
    raise NotImplementedError

  def in_order(self):
    raise NotImplementedError

  def read(self, payloads):
    raise NotImplementedError

  def encoded(self, payloads):
    return tf.map_fn(tf.io.encode_png, self.read(payloads), fn_output_signature=tf.string)

  def subset(self, indices):
    raise NotImplementedError

  def unreadable(self, error, payloads, during):
    """The DataError that names what TensorFlow's `error` failed to read, or None."""
    del error, payloads, during
    return None

  def constant(self, name, value):
    """`value` as a tensor made once, eagerly: every pipeline that captures it shares
    one copy (numpy captured in a traced function would be copied into each graph)."""
    if not hasattr(self, name):
      with tf.init_scope():
        setattr(self, name, tf.constant(value))
    return getattr(self, name)

  def sample(self, count):
    """`count` of the examples (all if fewer), drawn with a fixed seed and kept in
    order: a folder's examples are in class order, so its first ones are one class."""
    if count >= len(self):
      return self
    return self.subset(np.sort(np.random.default_rng(0).choice(len(self), count, replace=False)))

  def head(self, count):
    """The first `count` images (all if fewer), as numpy."""
    count = min(count, len(self))
    read = self.in_order().take(count).batch(count).map(lambda b: self.read(b["payload"]))
    return next(iter(read)).numpy()  # Read in a graph, as training reads.


class Indexed(Source):
  """A source that reads any example by its position: each epoch is a permutation of
  all examples seeded by (seed, epoch), and the payload is the example id. Subclasses
  set `labels` and define `read` (ids -> images)."""

  def epoch(self, seed, epoch, skip=0):
    return tf.data.Dataset.from_tensor_slices(self.examples(self.order(seed, epoch))).skip(skip)

  def examples_at(self, seed, epoch, start, count):
    """The examples `start` to `start + count` of the epoch's order, as one batch."""
    return self.examples(self.order(seed, epoch)[start:start + count])

  def in_order(self):
    return tf.data.Dataset.from_tensor_slices(self.examples(tf.range(len(self))))

  def order(self, seed, epoch):
    """The epoch's permutation of the example ids (a sort of N keys: O(N log N))."""
    return tf.argsort(tf.random.stateless_uniform([len(self)], seed=[seed, epoch]))

  def examples(self, index):
    """The examples of ids `index`, as one batch."""
    return {"index": index, "label": tf.gather(self.labels, index), "payload": index}
