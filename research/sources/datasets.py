"""The built-in dataset kinds of --dataset, each a registered `Dataset` (see
research/sources/__init__.py): cifar10, cifar100, folder, tfrecord, tfds and synthetic."""

import keras
import numpy as np

from research.sources import DATASETS, DataError, Dataset, needs_data_dir
from research.sources import records, tfds
from research.sources.cache import open_folder
from research.sources.folder import class_folders
from research.sources.memory import Arrays

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [f"class_{i:03d}" for i in range(100)]


@DATASETS.register("cifar10")
class Cifar10(Dataset):
  """CIFAR-10: 50,000 training and 10,000 test images of 32 pixels (Keras downloads it)."""

  keras_name, classes = "cifar10", CIFAR10_CLASSES

  def class_names(self):
    return self.classes

  def open(self):
    name = self.keras_name
    try:
      (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # Offline, no cache: urllib/HTTP errors of many kinds.
      raise DataError(
          f"could not download {name} ({type(e).__name__}: {e}). Offline, point at a "
          f"folder of class subfolders instead: --dataset=folder --data_dir=DIR") from e
    return (Arrays(x_train, y_train.reshape(-1).astype(np.int32)),
            Arrays(x_test, y_test.reshape(-1).astype(np.int32)), self.classes)


@DATASETS.register("cifar100")
class Cifar100(Cifar10):
  """CIFAR-100: as CIFAR-10, of 100 classes."""

  keras_name, classes = "cifar100", CIFAR100_CLASSES


@DATASETS.register("folder")
class Folder(Dataset):
  """The images of --data_dir's class subfolders (DIR/<class>/<image>).

  Decoded into memory, or streamed from their files, as --data_cache says."""

  trains_whole, has_test = True, False

  def __init__(self, config):
    super().__init__(config)
    needs_data_dir(config, "class subfolders")

  def class_names(self):
    return class_folders(self.config.data_dir)

  def open(self):
    train, names = open_folder(self.config.data_dir, self.config)
    return train, None, names


@DATASETS.register("tfrecord")
class Tfrecord(Dataset):
  """The record set in --data_dir (scripts/make_tfrecords.py), read a shard at a time."""

  trains_whole, has_test = True, False

  def __init__(self, config):
    super().__init__(config)
    needs_data_dir(config, "a record set of scripts/make_tfrecords.py", remote=True)

  def class_names(self):
    return records.read_metadata(self.config.data_dir)["class_names"]

  def open(self):
    train, names = records.Records.open(self.config.data_dir, self.config.image_size)
    return train, None, names


@DATASETS.register("tfds")
class Tfds(Dataset):
  """A TensorFlow Datasets dataset by name: --dataset=tfds:NAME.

  Prepared in --data_dir or TFDS's own dir, decoded into memory; its test split where it
  has one."""

  has_test = None

  def __init__(self, config, name=""):
    super().__init__(config)
    if not name:
      raise ValueError("tfds needs the dataset's name: --dataset=tfds:NAME "
                       "(tfds.list_builders() lists them)")
    self.name = name

  def open(self):
    config = self.config
    train, names = tfds.load(self.name, config.data_dir, config.image_size, "train")
    test = None
    if not config.val_split and tfds.has_split(tfds.builder(self.name, config.data_dir), "test"):
      test = tfds.load(self.name, config.data_dir, config.image_size, "test")[0]
    return train, test, names


@DATASETS.register("synthetic")
class Synthetic(Dataset):
  """Learnable random images: each class has its own mean colour and stripe.

  num_examples=0 takes --synthetic_examples; num_classes=0 takes --num_classes, or 10."""

  has_test = False

  def __init__(self, config, num_examples=0, num_classes=0):
    super().__init__(config)
    if num_examples < 0 or num_classes < 0 or num_classes == 1:
      raise ValueError(f"synthetic: num_examples must be >= 0 and num_classes 0 or >= 2, "
                       f"got {num_examples} and {num_classes}")
    self.num_examples = num_examples or config.synthetic_examples
    self.num_classes = num_classes or config.num_classes or 10

  def class_names(self):
    return [f"class_{i}" for i in range(self.num_classes)]

  def open(self):
    train, names = synthetic(self.num_examples, self.config.image_size, self.num_classes,
                             seed=self.config.seed)
    return train, None, names


def synthetic(num_examples, image_size, num_classes, seed=0):
  """Learnable random data: each class has its own mean colour and stripe."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  colours = rng.uniform(40, 215, (num_classes, 1, 1, 3))
  stripe = (np.arange(image_size) % max(2, num_classes) == 0).astype(np.float32)
  images = colours[labels] + rng.normal(0, 25, (num_examples, image_size, image_size, 3))
  images += 40 * stripe[None, :, None, None] * (labels % 2 == 0)[:, None, None, None]
  names = [f"class_{i}" for i in range(num_classes)]
  return Arrays(np.clip(images, 0, 255).astype(np.uint8), labels), names

