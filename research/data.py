"""Datasets as in-memory uint8 arrays, and tf.data pipelines that are a function of step.

Every dataset kind ends as a `Split(images uint8 [N,H,W,3], labels int32 [N])`.
The training pipeline is `step -> augmented batch dict`: epoch `e` visits the
examples in a permutation seeded by (seed, e), and batch augmentation is seeded by
(seed, step). A run restarted at step s therefore sees exactly the batches it would
have seen, under any strategy, with no iterator state to checkpoint.
"""

import dataclasses
import hashlib
import os

from absl import logging
import numpy as np
import tensorflow as tf

from research import augment as augment_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_SPLIT_SEED = 20240917  # fixed: the validation split never depends on --seed


class DataError(ValueError):
  """Missing, empty or unreadable data; the message says what to do."""


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class Data:
  train: Split
  eval: Split          # None: no evaluation (a folder trained whole, no --eval_data_dir)
  class_names: list
  eval_name: str       # "validation", "test" or "eval folder"


# --- loading ------------------------------------------------------------------


def load(config):
  """Loads `config.dataset` and carves the deterministic validation split."""
  if config.dataset in ("cifar10", "cifar100"):
    train, test, names = _load_keras_cifar(config.dataset)
  elif config.dataset == "folder":
    train, names = load_folder(config.data_dir, config.image_size, config.cache_dir,
                               skip_bad_images=config.skip_bad_images)
    test = None
  else:
    train, names = synthetic(config.synthetic_examples, config.image_size,
                             config.num_classes or 10, seed=config.seed)
    test = None
  if len(names) < 2:
    raise DataError(f"--dataset={config.dataset} has {len(names)} class ({', '.join(names)}): "
                    "a classifier needs at least 2")
  if config.image_size != train.images.shape[1]:
    train = _resize_split(train, config.image_size)
    if test is not None:
      test = _resize_split(test, config.image_size)
  if config.val_split > 0:
    train, val = split_validation(train, config.val_split)
    return Data(train, val, names, "validation")
  if config.eval_data_dir:
    return Data(train, load_eval_folder(config.eval_data_dir, names, config.image_size,
                                        config.cache_dir), names, "eval folder")
  if test is None and config.dataset != "folder":
    raise DataError(f"--dataset={config.dataset} has no test split; set --val_split > 0")
  return Data(train, test, names, "test" if test is not None else None)


def load_eval_folder(eval_dir, class_names, image_size, cache_dir=""):
  """A folder of (some of) `class_names`' subfolders, labelled by the training classes."""
  split, names = load_folder(eval_dir, image_size, cache_dir)
  unknown = sorted(set(names) - set(class_names))
  if unknown:
    raise DataError(f"--eval_data_dir {eval_dir!r} has classes the training data does not: "
                    f"{', '.join(unknown)}")
  to_train = np.array([class_names.index(n) for n in names], np.int32)
  return Split(split.images, to_train[split.labels])


def split_validation(split, fraction):
  """Holds out `fraction` of each class, the same examples for every run."""
  rng = np.random.default_rng(_SPLIT_SEED)
  val_idx = []
  for label in np.unique(split.labels):
    idx = np.flatnonzero(split.labels == label)
    idx = idx[rng.permutation(len(idx))]
    val_idx.append(idx[:int(round(fraction * len(idx)))])
  val_mask = np.zeros(len(split), bool)
  val_mask[np.concatenate(val_idx)] = True
  if val_mask.all() or not val_mask.any():
    raise DataError(f"--val_split={fraction} leaves an empty training or validation set "
                    f"of {len(split)} examples")
  return (Split(split.images[~val_mask], split.labels[~val_mask]),
          Split(split.images[val_mask], split.labels[val_mask]))


def _load_keras_cifar(name):
  import keras  # pylint: disable=g-import-not-at-top
  module = getattr(keras.datasets, name)
  try:
    (x_train, y_train), (x_test, y_test) = module.load_data()
  except Exception as e:  # Offline, no cache: urllib/HTTP errors of many kinds.
    raise DataError(
        f"could not download {name} ({type(e).__name__}: {e}). Offline, point at a "
        f"folder of class subfolders instead: --dataset=folder --data_dir=DIR") from e
  names = (CIFAR10_CLASSES if name == "cifar10"
           else [f"class_{i:03d}" for i in range(100)])
  return (Split(x_train, y_train.reshape(-1).astype(np.int32)),
          Split(x_test, y_test.reshape(-1).astype(np.int32)), names)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def synthetic(num_examples, image_size, num_classes, seed=0):
  """Learnable random data: each class has its own mean colour and stripe."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
  colours = rng.uniform(40, 215, (num_classes, 1, 1, 3))
  stripe = (np.arange(image_size) % max(2, num_classes) == 0).astype(np.float32)
  images = colours[labels] + rng.normal(0, 25, (num_examples, image_size, image_size, 3))
  images += 40 * stripe[None, :, None, None] * (labels % 2 == 0)[:, None, None, None]
  names = [f"class_{i}" for i in range(num_classes)]
  return Split(np.clip(images, 0, 255).astype(np.uint8), labels), names


# --- image folders ------------------------------------------------------------


def list_folder(data_dir):
  """(paths, labels, class_names) of a folder of class subfolders, sorted."""
  if not os.path.isdir(data_dir):
    raise DataError(f"data dir {data_dir!r} does not exist")
  names = sorted(d for d in os.listdir(data_dir)
                 if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith("."))
  if not names:
    raise DataError(f"{data_dir!r} has no class subfolders (expected DIR/<class>/<image>)")
  paths, labels = [], []
  for label, name in enumerate(names):
    for root, _, files in sorted(os.walk(os.path.join(data_dir, name))):
      for f in sorted(files):
        if f.lower().endswith(IMAGE_EXTENSIONS):
          paths.append(os.path.join(root, f))
          labels.append(label)
  if not paths:
    raise DataError(f"{data_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  empty = sorted(set(names) - {names[l] for l in labels})
  if empty:
    raise DataError(f"class folder(s) without images in {data_dir!r}: {', '.join(empty)}")
  return paths, np.asarray(labels, np.int32), names


def load_folder(data_dir, image_size, cache_dir="", skip_bad_images=False):
  """Decodes a class-folder dataset once, caches it as .npz, and returns it.

  Unreadable images stop the load with their names, or with `skip_bad_images`
  are left out and listed in a warning.
  """
  paths, labels, names = list_folder(data_dir)
  cache = _cache_path(paths, image_size, cache_dir)
  if os.path.exists(cache):
    with np.load(cache) as f:
      images, labels, ok = f["images"], f["labels"], f["ok"]
  else:
    images, ok = decode_images(paths, image_size)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = cache + ".tmp.npz"
    np.savez(tmp, images=images, labels=labels, ok=ok)
    os.replace(tmp, cache)
  if not ok.all():
    bad = [paths[i] for i in np.flatnonzero(~ok)]
    listed = ", ".join(bad[:20]) + (f" ... ({len(bad) - 20} more)" if len(bad) > 20 else "")
    if not skip_bad_images:
      raise DataError(f"{len(bad)} image file(s) could not be decoded: {listed}. "
                      "Fix or remove them, or pass --skip_bad_images")
    logging.warning("skipped %d unreadable image file(s) of %d: %s", len(bad), len(paths),
                    ", ".join(bad))
    images, labels = images[ok], labels[ok]
    empty = sorted(set(names) - {names[l] for l in labels})
    if empty:
      raise DataError(f"no readable images left in class folder(s): {', '.join(empty)}")
  return Split(images, labels), names


def decode_image(encoded, image_size):
  """One encoded JPEG/PNG/BMP/GIF (grey, RGBA, any size) -> uint8 RGB [S, S, 3], as
  training saw it (exported SavedModels decode their image bytes with this too)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  image = tf.image.resize(image, [image_size, image_size], antialias=True)
  return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)


def decode_images(paths, image_size):
  """Decodes image files to uint8 RGB [N,S,S,3] with `decode_image`.

  Returns (images, ok): `ok[i]` is False where file i could not be decoded.
  """
  def decode(index, path):
    return index, decode_image(tf.io.read_file(path), image_size)

  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().batch(1024)
  images = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
  seen = np.zeros(len(paths), bool)
  for index, batch in ds.as_numpy_iterator():
    images[index] = batch
    seen[index] = True
  return images, seen


def _cache_path(paths, image_size, cache_dir):
  digest = hashlib.sha256(f"v2|{image_size}".encode())  # Bump v on a format change.
  for p in paths:
    st = os.stat(p)
    digest.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  root = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "research")
  return os.path.join(root, f"folder-{image_size}px-{digest.hexdigest()[:16]}.npz")


def _resize_split(split, size):
  images = tf.image.resize(split.images, [size, size], antialias=True)
  return Split(tf.cast(tf.round(tf.clip_by_value(images, 0, 255)), tf.uint8).numpy(),
               split.labels)


# --- pipelines ----------------------------------------------------------------


def train_dataset(split, config, start_step, input_context):
  """The per-replica training batches of steps [start_step, config.train_steps).

  Each input pipeline builds the global batch of a step as a dict (`image` float32,
  `label` int32, `target` one-hot float32 over `config.num_classes`, `index` example
  ids), augments it with a seed of (seed, step), takes its own replicas' slice, and
  yields one element per local replica, the order tf.distribute hands them out in.
  """
  batch = config.batch_size
  steps_per_epoch = len(split) // batch
  images, labels = tf.constant(split.images), tf.constant(split.labels)
  ops = augment_lib.pipeline(config.augment, config.seed)

  def epoch_batches(epoch):
    keys = tf.random.stateless_uniform([len(split)], seed=[config.seed, epoch])
    order = tf.argsort(keys)[:steps_per_epoch * batch]
    return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [steps_per_epoch, batch]))

  def make_batch(step, index):
    label = tf.gather(labels, index)
    examples = {"image": tf.cast(tf.gather(images, index), tf.float32), "label": label,
                "target": tf.one_hot(label, config.num_classes), "index": index}
    seed = tf.stack([tf.constant(config.seed, tf.int64), step])
    return ops(examples, seed, step, step // steps_per_epoch)

  first_epoch = start_step // steps_per_epoch
  num_epochs = -(-config.train_steps // steps_per_epoch)
  indices = tf.data.Dataset.range(first_epoch, num_epochs).flat_map(epoch_batches)
  indices = indices.skip(start_step - first_epoch * steps_per_epoch)
  steps = tf.data.Dataset.range(start_step, config.train_steps)
  ds = tf.data.Dataset.zip(steps, indices)
  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _per_replica(ds, input_context).prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, global_batch, num_classes, input_context):
  """Every example exactly once: the last batch is padded and masked, never dropped.

  Yields per-replica dicts of `image` float32, `label`, one-hot `target` and `mask`
  float32 (0 on padding).
  """
  n = len(split)
  steps = eval_steps(n, global_batch)
  pad = steps * global_batch - n
  images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
  labels = np.concatenate([split.labels, np.zeros(pad, np.int32)])
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  ds = tf.data.Dataset.from_tensor_slices((images, labels, mask)).batch(global_batch)
  ds = ds.map(lambda x, y, m: {"image": tf.cast(x, tf.float32), "label": y,
                               "target": tf.one_hot(y, num_classes), "mask": m})
  return _per_replica(ds, input_context).prefetch(tf.data.AUTOTUNE)


def eval_steps(num_examples, global_batch):
  return -(-num_examples // global_batch)


def _per_replica(ds, ctx):
  """Slices each global batch to this pipeline's replicas, one element per replica."""
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return ds
  local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
  first = ctx.input_pipeline_id * local

  def split(batch):
    per = tf.nest.map_structure(
        lambda t: tf.reshape(t, [ctx.num_replicas_in_sync, -1] + t.shape[1:].as_list())
        [first:first + local], batch)
    return tf.data.Dataset.from_tensor_slices(per)

  return ds.flat_map(split)
