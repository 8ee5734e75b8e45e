"""TensorFlow Datasets by name (--dataset=tfds:NAME): prepared data, read from --data_dir
(default: TFDS's own, ~/tensorflow_datasets) and decoded into memory. A dataset too large
for memory is written once as a record set (scripts/make_tfrecords.py
--dataset=tfds:NAME), which streams. `tensorflow-datasets` is an optional extra."""

import numpy as np
import tensorflow as tf

from research.sources import DataError
from research.sources.images import decode_image
from research.sources.memory import Arrays

PREFIX = "tfds:"


def builder(name, data_dir=""):
  """The TFDS builder of `name` (NAME or NAME:VERSION, config as NAME/CONFIG)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"--dataset={PREFIX}{name} needs TensorFlow Datasets: "
                    "pip install -e '.[tfds]'") from e
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"TensorFlow Datasets has no dataset {name!r} (tfds.list_builders() "
                    "lists them)") from e


def keys(tfds_builder):
  """(image key, label key) of a supervised image dataset."""
  supervised = tfds_builder.info.supervised_keys
  if not supervised or len(supervised) != 2:
    raise DataError(f"{PREFIX}{tfds_builder.name} is not an (image, label) dataset "
                    f"(its supervised keys: {supervised})")
  return supervised


def class_names(tfds_builder):
  names = tfds_builder.info.features[keys(tfds_builder)[1]].names
  return [str(n) for n in names]


def encoded(tfds_builder, split):
  """A dataset of {"encoded": the image as stored, "label"} of `split`, in order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image, label = keys(tfds_builder)
  try:
    ds = tfds_builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={image: tfds.decode.SkipDecoding()})
  except AssertionError as e:  # TFDS's way of saying "not prepared here".
    raise DataError(
        f"{PREFIX}{tfds_builder.name} is not prepared in {tfds_builder.data_dir_root}. "
        f"Offline, prepare it where there is internet (`tfds build {tfds_builder.name} "
        "--data_dir=DIR`), copy DIR here and pass --data_dir=DIR") from e
  except ValueError as e:  # An unknown split.
    raise DataError(f"{PREFIX}{tfds_builder.name}: {e}") from e
  return ds.map(lambda ex: {"encoded": ex[image], "label": ex[label]})


def has_split(tfds_builder, split):
  splits = tfds_builder.info.splits
  return not splits or split in splits  # Not yet known (mocked data): try it.


def load(name, data_dir, image_size, split="train"):
  """Arrays of `split` decoded at `image_size`, and the class names."""
  tfds_builder = builder(name, data_dir)
  ds = encoded(tfds_builder, split).map(
      lambda ex: (decode_image(ex["encoded"], image_size), tf.cast(ex["label"], tf.int32)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, labels = [], []
  for batch_images, batch_labels in ds.batch(1024).as_numpy_iterator():
    images.append(batch_images)
    labels.append(batch_labels)
  if not labels:
    raise DataError(f"{PREFIX}{name} split {split!r} is empty")
  return Arrays(np.concatenate(images), np.concatenate(labels)), class_names(tfds_builder)
