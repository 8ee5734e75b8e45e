"""Datasets as sources (research/sources), and tf.data pipelines that are a function of step.

Every dataset kind ends as a source: uint8 arrays in memory when they fit, otherwise
image files or TFRecord shards read as training goes. The training pipeline is
`step -> augmented batch dict`: epoch `e` visits the examples in an order seeded by
(seed, e), and batch augmentation is seeded by (seed, step). A run restarted at step s
therefore sees exactly the batches it would have seen, under any strategy, with no
iterator state to checkpoint. Each input pipeline reads, decodes and augments only its
own replicas' share of a global batch (the whole batch when an augmentation mixes
examples across it).
"""

import collections
import contextlib
import dataclasses
import hashlib
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

from research import augment as augment_lib
from research import files
from research.footprint import available_memory
from research.sources import DataError
from research.sources import Indexed
from research.sources import files as files_source
from research.sources import records
from research.sources import tfds as tfds_source
from research.sources.files import decode_image
from research.sources.memory import Arrays as Split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_SPLIT_SEED = 20240917  # fixed: the validation split never depends on --seed
# --data_cache=auto decodes a folder into memory when the images take at most this
# fraction of the memory available (the rest: the model, a second copy while caching).
_MEMORY_FRACTION = 0.25


@dataclasses.dataclass
class Data:
  train: object        # a research.sources kind
  eval: object         # None: no evaluation (a folder trained whole, no --eval_data_dir)
  class_names: list
  eval_name: str       # "validation", "test" or "eval folder"
  # A folder's files, relative to it, as listed (model_dir.check_listing); else None.
  listing: list = None


# --- loading ------------------------------------------------------------------


def load(config):
  """Loads `config.dataset` and carves the deterministic validation split."""
  train, test, names = open_source(config)
  if len(names) < 2:
    raise DataError(f"--dataset={config.dataset} has {len(names)} class ({', '.join(names)}): "
                    "a classifier needs at least 2")
  if config.image_size != train.image_size:  # Arrays only: the others decode to size.
    train = _resize_split(train, config.image_size)
    if test is not None:
      test = _resize_split(test, config.image_size)
  listing = train.listed_files
  if config.val_split > 0:
    train, val = split_validation(train, config.val_split, names)
    return Data(train, val, names, "validation", listing)
  if config.eval_data_dir:
    return Data(train, load_eval_folder(config.eval_data_dir, names, config.image_size,
                                        config.cache_dir, config), names, "eval folder",
                listing)
  if test is None and config.dataset not in ("folder", "tfrecord"):
    raise DataError(f"--dataset={config.dataset} has no test split; set --val_split > 0")
  return Data(train, test, names, "test" if test is not None else None, listing)


def open_source(config):
  """(train source, test source or None, class names) of `config.dataset`."""
  if config.dataset in ("cifar10", "cifar100"):
    return _load_keras_cifar(config.dataset)
  if config.dataset == "folder":
    train, names = open_folder(config.data_dir, config)
  elif config.dataset == "tfrecord":
    train, names = open_records(config.data_dir, config.image_size)
  elif config.dataset.startswith(tfds_source.PREFIX):
    return _open_tfds(config)
  else:
    train, names = synthetic(config.synthetic_examples, config.image_size,
                             config.num_classes or 10, seed=config.seed)
  return train, None, names


def _open_tfds(config):
  name = config.dataset[len(tfds_source.PREFIX):]
  train, names = tfds_source.load(name, config.data_dir, config.image_size, "train")
  test = None
  if not config.val_split and tfds_source.has_split(
      tfds_source.builder(name, config.data_dir), "test"):
    test = tfds_source.load(name, config.data_dir, config.image_size, "test")[0]
  return train, test, names


def load_eval_folder(eval_dir, class_names, image_size, cache_dir="", config=None,
                     skip_bad_images=False):
  """A folder of (some of) `class_names`' subfolders, labelled by the training classes;
  in memory, or streamed as `config.data_cache` says (and its --skip_bad_images)."""
  if config is None:
    split, names = load_folder(eval_dir, image_size, cache_dir, skip_bad_images)
  else:
    split, names = open_folder(eval_dir, config)
  unknown = sorted(set(names) - set(class_names))
  if unknown:
    raise DataError(f"--eval_data_dir {eval_dir!r} has classes the training data does not: "
                    f"{', '.join(unknown)}")
  split.labels = np.array([class_names.index(n) for n in names], np.int32)[split.labels]
  return split


def open_folder(data_dir, config):
  """(source, class names) of a class folder: decoded into memory (and cached), or
  streamed from its files, as --data_cache says (auto: by the decoded size)."""
  paths, labels, names = list_folder(data_dir)
  decoded = len(paths) * config.image_size ** 2 * 3
  mode = config.data_cache
  if mode == "auto":
    available = available_memory()
    mode = "memory" if decoded <= _MEMORY_FRACTION * available else "none"
    logging.info("%s: %d images are %.2f GB decoded at %dpx, %.1f GB of memory available: "
                 "%s (--data_cache=auto)", data_dir, len(paths), decoded / 1e9,
                 config.image_size, available / 1e9,
                 "decoded into memory" if mode == "memory" else "read from the files as "
                 "training goes")
  if mode == "memory":
    return load_folder(data_dir, config.image_size, config.cache_dir,
                       skip_bad_images=config.skip_bad_images, listed=(paths, labels, names))
  ok = np.array([files_source.looks_readable(p) for p in paths], bool)
  readable = _drop_unreadable(paths, labels, names, ok, config.skip_bad_images)
  return _listed(files_source.Files(np.asarray(paths, object)[ok], readable,
                                    config.image_size), data_dir, paths, labels, ok), names


def _listed(source, data_dir, paths, labels, ok):
  """`source` of a listing's readable files, knowing the listing's files and, if some
  were not readable, its labels."""
  source.listed_files = [os.path.relpath(p, data_dir) for p in paths]
  if not ok.all():
    source.listing = (labels, ok)
  return source


@contextlib.contextmanager
def naming_bad_files(source, payloads, during):
  """Turns TensorFlow's error for a streamed image file that cannot be read or decoded,
  which names no file, into a DataError that does: the files of `source` among
  `payloads()` (example ids) are then decoded again, each on its own (`decode_images`).
  `during`: what was running. A record set's damage (a cut-off or vanished shard, a
  record that does not decode) becomes a DataError with TensorFlow's reason."""
  try:
    yield
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.DataLossError) as e:
    if isinstance(source, records.Records):
      # The reason alone, without the traceback of the graph's ops and their names.
      reason = " ".join(re.sub(r"\{\{function_node [^}]*\}\}|\[\[\{\{node [^]]*\]\]|"
                               r"\[Op:[^]]*\]", "", e.message.split("\n\n")[-1]).split())
      raise DataError(f"the record set could not be read {during}: {reason}. Write it "
                      "again from readable images (scripts/make_tfrecords.py) and rerun the "
                      "same command (a run resumes from its last checkpoint)") from None
    if not isinstance(source, files_source.Files):
      raise
    paths = source.paths[np.unique(payloads())].astype(str)
    bad = list(paths[~decode_images(paths, source.image_size)[1]])
    if not bad:
      raise
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise DataError(f"{len(bad)} image file(s) could not be read or decoded {during}: "
                    f"{listed}. Replace them with readable copies and rerun the same "
                    "command (a run resumes from its last checkpoint)") from None


def step_payloads(source, config, first, last):
  """The example ids of the global batches of steps [first, last) (`source` read by index)."""
  steps_per_epoch = len(source) // config.batch_size
  return np.concatenate([source.examples_at(config.seed, step // steps_per_epoch,
                                            (step % steps_per_epoch) * config.batch_size,
                                            config.batch_size)["payload"].numpy()
                         for step in range(first, last)])


def open_records(directory, image_size):
  """(Records, class names) of a record set written by scripts/make_tfrecords.py."""
  try:
    source, names = records.Records.open(directory, image_size)
  except FileNotFoundError as e:
    raise DataError(f"{directory!r} is not a record set (no {records.METADATA}); write one "
                    "with scripts/make_tfrecords.py --data_dir=FOLDER --output=DIR") from e
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f"{directory!r}/{records.METADATA} is unreadable ({e}); write the "
                    "record set again") from e
  missing = [os.path.basename(p) for p in source.paths if not tf.io.gfile.exists(p)]
  if missing:
    raise DataError(f"{directory!r} lacks {len(missing)} of the {len(source.paths)} shards "
                    f"its {records.METADATA} lists: {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}; copy them too, or write the "
                    "record set again")
  return source, names


def split_validation(split, fraction, class_names=None):
  """Holds out `fraction` of each class, the same examples for every run, drawn over the
  folder's whole listing where unreadable files were skipped (`split.listing`)."""
  labels, readable = split.listing or (split.labels, np.ones(len(split), bool))
  rng = np.random.default_rng(_SPLIT_SEED)
  val_idx = []
  for label in np.unique(labels):
    idx = np.flatnonzero(labels == label)
    idx = idx[rng.permutation(len(idx))]
    val_idx.append(idx[:int(round(fraction * len(idx)))])
  val_mask = np.zeros(len(labels), bool)
  val_mask[np.concatenate(val_idx)] = True
  val_mask = val_mask[readable]
  if val_mask.all() or not val_mask.any():
    raise DataError(_too_small(split.labels, val_mask, fraction, class_names))
  untrained = np.setdiff1d(split.labels, split.labels[~val_mask])
  if untrained.size:
    logging.warning("--val_split=%s holds out every example of %s: training sees none of "
                    "them (a smaller --val_split keeps some)", fraction,
                    _some_classes(untrained, class_names))
  return split.subset(np.flatnonzero(~val_mask)), split.subset(np.flatnonzero(val_mask))


def _too_small(labels, val_mask, fraction, class_names):
  """The message for a --val_split that leaves the training or validation set empty:
  the classes too small for it, and the fractions that hold out at least one example
  of the largest class and leave it at least one (round(f * n) is in [1, n - 1])."""
  empty = "training" if val_mask.all() else "validation"
  counts = np.bincount(labels)
  largest = int(counts.max())
  low = 0.5 / largest  # round() takes x.5 down to the even number: strictly above.
  advice = (f"a --val_split above {low:.3g} and below {1 - low:.3g} holds out at least one "
            f"example of the largest class ({largest} examples) and trains on the rest"
            if largest > 1 else "every class has 1 example: add examples, or train on all "
            "of them (--val_split=0) and evaluate on another folder (--eval_data_dir)")
  return (f"--val_split={fraction} leaves an empty {empty} set of {len(labels)} examples: "
          f"{'none' if empty == 'validation' else 'all'} of each class's examples are held "
          f"out, as {_some_classes(np.flatnonzero(counts), class_names)} "
          f"{'are' if np.count_nonzero(counts) > 1 else 'is'} too small for it "
          f"({_sizes(counts)}); {advice}")


def _some_classes(labels, class_names, shown=3):
  """`labels` named (as class names if known) for a message: the first few and a count."""
  named = [class_names[l] if class_names else str(l) for l in labels[:shown]]
  more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
  kind = "class" if len(labels) == 1 else f"the {len(labels)} classes"
  return f"{kind} {', '.join(named)}{more}"


def _sizes(counts):
  low, high = counts[counts > 0].min(), counts.max()
  return f"{low}{'' if low == high else f' to {high}'} example{'s' if high > 1 else ''} each"


def _load_keras_cifar(name):
  import keras  # pylint: disable=g-import-not-at-top
  module = getattr(keras.datasets, name)
  try:
    (x_train, y_train), (x_test, y_test) = module.load_data()
  except Exception as e:  # Offline, no cache: urllib/HTTP errors of many kinds.
    raise DataError(
        f"could not download {name} ({type(e).__name__}: {e}). Offline, point at a "
        f"folder of class subfolders instead: --dataset=folder --data_dir=DIR") from e
  names = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
  return (Split(x_train, y_train.reshape(-1).astype(np.int32)),
          Split(x_test, y_test.reshape(-1).astype(np.int32)), names)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [f"class_{i:03d}" for i in range(100)]


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


def class_names_of(config):
  """The class names of `config.dataset` where they are known without reading an image
  (None for TFDS, or data that cannot be read: loading it will say why)."""
  try:
    if config.dataset == "cifar10":
      return CIFAR10_CLASSES
    if config.dataset == "cifar100":
      return CIFAR100_CLASSES
    if config.dataset == "folder":
      return class_folders(config.data_dir)
    if config.dataset == "tfrecord":
      return records.read_metadata(config.data_dir)["class_names"]
    if config.dataset == "synthetic":
      return [f"class_{i}" for i in range(config.num_classes or 10)]
  except (OSError, ValueError, KeyError):
    pass
  return None


def class_folders(data_dir):
  """The sorted class subfolders of `data_dir`, its hidden ones left out."""
  return sorted(d for d in os.listdir(data_dir)
                if os.path.isdir(os.path.join(data_dir, d)) and not _hidden(d))


def list_folder(data_dir):
  """(paths, labels, class_names) of a folder of class subfolders, sorted. Each real
  file is listed once, under the class folder that holds it (links that lead to files
  listed already are named in a warning, as are the files of types not read)."""
  if not os.path.isdir(data_dir):
    raise DataError(f"data dir {data_dir!r} " + ("is a file, not a folder of class subfolders"
                                                 if os.path.exists(data_dir) else
                                                 "does not exist"))
  names = class_folders(data_dir)
  if not names:
    raise DataError(f"{data_dir!r} has no class subfolders (expected DIR/<class>/<image>)")
  _check_top_level(data_dir)
  found, ignored, loops = _scan(data_dir, names)
  _warn_ignored(data_dir, ignored)
  paths, labels = _once_each(data_dir, found, loops)
  if not paths:
    raise DataError(f"{data_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  unnamed = [p for p in paths if not _utf8(p)]
  if unnamed:  # TensorFlow takes a path as UTF-8 (an unzipped Windows archive's are not).
    raise DataError(f"{len(unnamed)} file name(s) in {data_dir!r} are not UTF-8: "
                    f"{', '.join(map(repr, unnamed[:5]))}; rename them (convmv -f latin1 -t "
                    "utf8 -r --notest DIR)")
  empty = sorted(set(names) - {names[l] for l in labels})
  if empty:
    raise DataError(f"class folder(s) without images in {data_dir!r}: {', '.join(empty)}")
  return paths, np.asarray(labels, np.int32), names


def _check_top_level(data_dir):
  """Refuses class folders that are links to nothing (the class would be lost); warns
  about images beside the class folders, in none of them."""
  entries = [e for e in os.listdir(data_dir) if not _hidden(e)]
  broken = [e for e in entries if os.path.islink(os.path.join(data_dir, e))
            and not os.path.exists(os.path.join(data_dir, e))]
  if broken:
    raise DataError(f"{len(broken)} link(s) in {data_dir!r} lead to nothing: "
                    + ", ".join(f"{e} -> {os.readlink(os.path.join(data_dir, e))}"
                                for e in sorted(broken)[:5])
                    + "; point them at their class folders, or remove them")
  stray = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)
           and os.path.isfile(os.path.join(data_dir, e))]
  if stray:
    logging.warning("%s: ignored %d image(s) in no class folder (%s%s); a class's images "
                    "go in DIR/<class>/", data_dir, len(stray), ", ".join(sorted(stray)[:3]),
                    " ..." if len(stray) > 3 else "")


def _scan(data_dir, names):
  """The image files under the class folders `names` of `data_dir` as [(path, label,
  real path, reached by no link)], the other files counted by the type their names end
  in (each real file once), and the linked folders read once [(link, the folder read
  already)]."""
  found, ignored, loops = [], {}, []
  home = os.path.realpath(data_dir)
  for label, name in enumerate(names):
    for root, real_root, filenames in sorted(_walk(os.path.join(data_dir, name), loops)):
      # Reached by no link: the real folder is where the path says.
      direct = real_root == os.path.join(home, os.path.relpath(root, data_dir))
      for f in sorted(filenames):
        if _hidden(f):
          continue
        if not f.lower().endswith(IMAGE_EXTENSIONS):
          ignored.setdefault(os.path.join(real_root, f), os.path.splitext(f)[1].lower())
          continue
        path = os.path.join(root, f)
        linked = os.path.islink(path)
        found.append((path, label, os.path.realpath(path) if linked
                      else os.path.join(real_root, f), direct and not linked))
  return found, collections.Counter(ignored.values()), loops


def _warn_ignored(data_dir, ignored):
  """One warning naming how many files of which types `data_dir` holds but are not read."""
  if ignored:
    by_count = sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0]))
    kinds = ", ".join(f"{kind or '(no extension)'}: {n}" for kind, n in by_count)
    logging.warning("%s: ignored %d files of unsupported types (%s); the types read are %s "
                    "(convert the others to use them)", data_dir, sum(ignored.values()),
                    kinds, " ".join(IMAGE_EXTENSIONS))


def _once_each(data_dir, found, loops):
  """The (paths, labels) of `found` [(path, label, real path, reached by no link)] with
  each real file once: where links lead to a file by several paths, the one without a
  link is kept (so a link to another class's folder moves none of its images), else the
  first. Warns naming the paths left out and the linked folders `loops` read once."""
  keep = {}
  for i, (_, _, real, direct) in enumerate(found):
    if real not in keep or (direct and not found[keep[real]][3]):
      keep[real] = i
  rel = lambda path: os.path.relpath(path, data_dir)
  again = [f"{rel(path)} is {rel(found[keep[real]][0])}"
           for i, (path, _, real, _) in enumerate(found) if keep[real] != i]
  if again or loops:
    named = again[:3] + [f"{rel(link)} is {rel(first)}" for link, first in loops[:3]]
    logging.warning("%s: links lead to images listed already; each is read once, under the "
                    "class folder that holds it: %d file path(s) and %d linked folder(s) left "
                    "out (%s%s)", data_dir, len(again), len(loops), "; ".join(named),
                    " ..." if len(again) > 3 or len(loops) > 3 else "")
  kept = sorted(keep.values())
  return [found[i][0] for i in kept], [found[i][1] for i in kept]


def _walk(folder, loops):
  """(folder, its real path, file names) of `folder` and every folder under it, linked
  ones too (each real folder once: a link up the tree would loop), hidden ones left
  out. Appends to `loops` (link, the folder read already) for each folder read before."""
  seen = {}
  for root, dirs, filenames in os.walk(folder, onerror=_unreadable, followlinks=True):
    real = os.path.realpath(root)
    if real in seen:
      loops.append((root, seen[real]))
      dirs[:] = []
      continue
    seen[real] = root
    dirs[:] = [d for d in dirs if not _hidden(d)]
    yield root, real, filenames


def _unreadable(error):
  """os.walk's error: a folder that cannot be listed would lose its images silently."""
  raise DataError(f"cannot list the folder {error.filename!r} ({error.strerror}); make it "
                  "readable, or move it out of the data dir")


def _utf8(path):
  try:
    path.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def _hidden(name):
  """Not the user's data: hidden files and folders (.ipynb_checkpoints, a NAS's
  .@__thumb, macOS's ._x.jpg metadata twins) and the __MACOSX folder of a macOS zip."""
  return name.startswith(".") or name == "__MACOSX"


def load_folder(data_dir, image_size, cache_dir="", skip_bad_images=False, listed=None):
  """Decodes a class-folder dataset once, caches it as .npz, and returns it.

  Unreadable images stop the load with their names, or with `skip_bad_images`
  are left out and listed in a warning. `listed`: `list_folder(data_dir)` if known.
  """
  paths, labels, names = listed or list_folder(data_dir)
  cache = _cache_path(paths, image_size, cache_dir)
  if os.path.exists(cache):
    with np.load(cache) as f:
      images, labels, ok = f["images"], f["labels"], f["ok"]
  else:
    images, ok = decode_images(paths, image_size)
    try:  # Per process: runs started together each write their own, the last one kept.
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      with files.replacing(cache) as tmp:
        np.savez(tmp, images=images, labels=labels, ok=ok)
    except OSError as e:  # The cache only saves the next run's decoding.
      logging.warning("could not cache the decoded images in %s (%s); the next run "
                      "decodes them again", cache, e.strerror or e)
  readable = _drop_unreadable(paths, labels, names, ok, skip_bad_images)
  return _listed(Split(images if ok.all() else images[ok], readable), data_dir, paths,
                 labels, ok), names


def _drop_unreadable(paths, labels, names, ok, skip_bad_images):
  """The labels of the readable files; stops naming the others unless `skip_bad_images`."""
  if ok.all():
    return labels
  bad = [paths[i] for i in np.flatnonzero(~ok)]
  listed = ", ".join(bad[:20]) + (f" ... ({len(bad) - 20} more)" if len(bad) > 20 else "")
  if not skip_bad_images:
    raise DataError(f"{len(bad)} image file(s) could not be decoded: {listed}. "
                    "Fix or remove them, or pass --skip_bad_images")
  logging.warning("skipped %d unreadable image file(s) of %d: %s", len(bad), len(paths),
                  ", ".join(bad))
  labels = labels[ok]
  empty = sorted(set(names) - {names[l] for l in labels})
  if empty:
    raise DataError(f"no readable images left in class folder(s): {', '.join(empty)}")
  return labels


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
    try:
      st = os.stat(p)
      stamp = f"{st.st_size}|{st.st_mtime_ns}"
    except OSError:  # A broken link, or a file gone: decoding names it as unreadable.
      stamp = "missing"
    digest.update(f"{os.path.abspath(p)}|{stamp}\n".encode())
  root = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "research")
  return os.path.join(root, f"folder-{image_size}px-{digest.hexdigest()[:16]}.npz")


def _resize_split(split, size, chunk=1024):
  """`split`'s images at `size`, resized `chunk` at a time: whole, the float32 copies
  would take about 12x the result (28 GB for CIFAR-10 at 128 pixels)."""
  images = np.empty((len(split.images), size, size, 3), np.uint8)
  for start in range(0, len(images), chunk):
    part = tf.image.resize(split.images[start:start + chunk], [size, size], antialias=True)
    images[start:start + chunk] = tf.cast(tf.round(tf.clip_by_value(part, 0, 255)), tf.uint8)
  return Split(images, split.labels)


# --- pipelines ----------------------------------------------------------------


def train_dataset(source, config, start_step, input_context, shard=True):
  """The per-replica training batches of steps [start_step, config.train_steps).

  The global batch of a step is the next `config.batch_size` examples of its epoch's
  order. Each input pipeline reads and augments its share of it (seeded by (seed,
  step)) as a dict (`image` float32, `label` int32, `target` one-hot float32 over
  `config.num_classes`, `index` example ids) and yields one element per local replica,
  the order tf.distribute hands them out in. Its share: its replicas' examples, or the
  whole batch when an augmentation mixes examples across it (or `shard` is False).
  """
  batch = config.batch_size
  steps_per_epoch = len(source) // batch
  ops = augment_lib.pipeline(config.augment, config.seed, config.train_steps, steps_per_epoch)
  offset, size = share(batch, input_context) if ops.sharded and shard else (0, batch)

  def epoch_batches(epoch, skip=0):
    return source.epoch(config.seed, epoch, skip).batch(batch, drop_remainder=True)

  def make_batch(step, examples):
    examples = {key: value[offset:offset + size] for key, value in examples.items()}
    label = examples["label"]
    built = {"image": tf.cast(source.read(examples["payload"]), tf.float32), "label": label,
             "target": tf.one_hot(label, config.num_classes), "index": examples["index"]}
    seed = tf.stack([tf.constant(config.seed, tf.int64), step])
    return ops(built, seed, ops.context(step, step // steps_per_epoch, batch, offset, size))

  if config.data_service:
    return _served(source, config, start_step, input_context, offset, make_batch)
  first_epoch = start_step // steps_per_epoch
  num_epochs = -(-config.train_steps // steps_per_epoch)
  batches = epoch_batches(first_epoch, (start_step - first_epoch * steps_per_epoch) * batch)
  batches = batches.concatenate(
      tf.data.Dataset.range(first_epoch + 1, num_epochs).flat_map(epoch_batches))
  steps = tf.data.Dataset.range(start_step, config.train_steps)
  ds = tf.data.Dataset.zip(steps, batches)
  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _per_replica(ds, input_context, batch, offset).prefetch(tf.data.AUTOTUNE)


SERVED_BLOCK = 16  # Steps in one split of the service's work (see _served).


def _served(source, config, start_step, input_context, offset, make_batch):
  """The training batches made by the tf.data service's workers at `config.data_service`:
  the dispatcher deals out blocks of up to SERVED_BLOCK steps of one epoch, a worker
  sorts the epoch's order once for a block (not once a step: 0.36 s at ImageNet's N) and
  makes its batches, and this pipeline takes them as they come. Every step's batch is
  exactly the local one, but their order is the workers' race (so no --deterministic,
  and a resume may repeat or miss the batches in flight when the run stopped)."""
  if not isinstance(source, Indexed):
    raise DataError(f"--data_service needs data read by index (in memory or a folder's "
                    f"files); {type(source).__name__} is read shard by shard")
  batch, seed = config.batch_size, config.seed
  steps_per_epoch = len(source) // batch
  blocks_per_epoch = -(-steps_per_epoch // SERVED_BLOCK)  # An epoch's last may be short.
  block_of = lambda step: (step // steps_per_epoch * blocks_per_epoch
                           + step % steps_per_epoch // SERVED_BLOCK)

  def block_batches(block):
    epoch = block // blocks_per_epoch
    first = epoch * steps_per_epoch + block % blocks_per_epoch * SERVED_BLOCK
    last = tf.minimum(first + SERVED_BLOCK, (epoch + 1) * steps_per_epoch)
    order = source.order(seed, epoch)

    def batch_of(step):
      start = (step - epoch * steps_per_epoch) * batch
      return make_batch(step, source.examples(order[start:start + batch]))

    steps = tf.data.Dataset.range(tf.maximum(first, start_step),
                                  tf.minimum(last, config.train_steps))
    return steps.map(batch_of, num_parallel_calls=tf.data.AUTOTUNE)

  ds = tf.data.Dataset.range(block_of(start_step), block_of(config.train_steps - 1) + 1)
  ds = ds.flat_map(block_batches).apply(tf.data.experimental.service.distribute(
      tf.data.experimental.service.ShardingPolicy.DYNAMIC, config.data_service))
  return _per_replica(ds, input_context, batch, offset).prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, global_batch, num_classes, input_context):
  """Every example exactly once: the last batch is padded and masked, never dropped.

  Yields per-replica dicts of `image` float32, `label`, one-hot `target` and `mask`
  float32 (0 on padding); each input pipeline reads only its replicas' share.
  """
  offset, size = share(global_batch, input_context)

  def pad(examples):  # To a whole batch, with copies of its first example.
    missing = global_batch - tf.shape(examples["label"])[0]
    mask = tf.concat([tf.ones_like(examples["label"], tf.float32), tf.zeros([missing])], 0)
    return {"mask": mask, **{key: tf.concat([value, tf.repeat(value[:1], missing, 0)], 0)
                             for key, value in examples.items()}}

  def make_batch(examples):
    examples = {key: value[offset:offset + size] for key, value in examples.items()}
    label = examples["label"]
    return {"image": tf.cast(source.read(examples["payload"]), tf.float32), "label": label,
            "target": tf.one_hot(label, num_classes), "mask": examples["mask"]}

  ds = source.in_order().batch(global_batch).map(pad)
  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _per_replica(ds, input_context, global_batch, offset).prefetch(tf.data.AUTOTUNE)


def shard_reading(source, workers):
  """A line for the log when each of `workers` (> 1) reads more than its share: a record
  set's global batch is the next examples of one sequence of whole shards, so every
  worker reads every shard's encoded bytes and decodes only its share."""
  if workers > 1 and isinstance(source, records.Records):
    return (f"each of the {workers} workers reads all {len(source.paths)} shards of the "
            "record set (a step's examples come from the shards in one sequence) and "
            "decodes only its share")
  return None


def eval_steps(num_examples, global_batch):
  return -(-num_examples // global_batch)


def share(global_batch, ctx):
  """(offset, size): the examples of a global batch this input pipeline's replicas get."""
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return 0, global_batch
  per_replica = global_batch // ctx.num_replicas_in_sync
  local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
  return ctx.input_pipeline_id * local * per_replica, local * per_replica


def _per_replica(ds, ctx, global_batch, built_from):
  """Cuts batches holding the global batch's examples from `built_from` on (its whole,
  or this pipeline's share) into this pipeline's replicas' batches, one element each."""
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return ds
  offset, size = share(global_batch, ctx)
  per_replica = global_batch // ctx.num_replicas_in_sync
  first = (offset - built_from) // per_replica

  def split(batch):
    per = tf.nest.map_structure(
        lambda t: tf.reshape(t, [-1, per_replica] + t.shape[1:].as_list())
        [first:first + size // per_replica], batch)
    return tf.data.Dataset.from_tensor_slices(per)

  return ds.flat_map(split)
