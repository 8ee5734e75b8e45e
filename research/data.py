"""A run's data (--dataset, its validation split), and tf.data pipelines that are a
function of step.

A dataset kind (research/sources/datasets.py, or a plugin's) opens as sources: uint8
arrays in memory when they fit, otherwise image files or TFRecord shards read as
training goes. The training pipeline is `step -> augmented batch dict`: epoch `e` visits
the examples in an order seeded by (seed, e), and batch augmentation is seeded by
(seed, step). A run restarted at step s therefore sees exactly the batches it would have
seen, under any strategy, with no iterator state to checkpoint. Each input pipeline
reads, decodes and augments only its own replicas' share of a global batch (the whole
batch when an augmentation mixes examples across it).
"""

import dataclasses

from absl import logging
import numpy as np
import tensorflow as tf

from research import augment as augment_lib
from research.sources import DATASETS, DataError, Indexed, records
from research.sources import datasets  # noqa: F401  (registers the built-in kinds)
from research.sources.cache import load_folder, open_folder
from research.sources.memory import Arrays

_SPLIT_SEED = 20240917  # fixed: the validation split never depends on --seed


@dataclasses.dataclass
class Data:
  train: object        # a research.sources kind
  eval: object         # None: no evaluation (a folder trained whole, no --eval_data_dir)
  class_names: list
  eval_name: str       # "validation", "test" or "eval folder"
  # A folder's files, relative to it, as listed (model_dir.check_listing); else None.
  listing: list = None


# --- loading ------------------------------------------------------------------


def dataset_of(config):
  """The `sources.Dataset` of `config.dataset`, its use by the run checked (DataError)."""
  try:
    return DATASETS.build(config.dataset, config)
  except DataError:
    raise
  except ValueError as e:  # Its arguments, or its builder's checks.
    raise DataError(f"--dataset: {e}") from None


def class_names_of(config):
  """The class names of `config.dataset` where they are known without reading an image
  (None for TFDS, or data that cannot be read: loading it will say why)."""
  try:
    return dataset_of(config).class_names()
  except (OSError, ValueError, KeyError):
    return None


def load(config):
  """Loads `config.dataset` and carves the deterministic validation split."""
  dataset = dataset_of(config)
  train, test, names = dataset.open()
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
  if test is None and not dataset.trains_whole:
    raise DataError(f"--dataset={config.dataset} has no test split; set --val_split > 0")
  return Data(train, test, names, "test" if test is not None else None, listing)


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


def step_payloads(source, batch_size, seed, first, last):
  """The example ids of the global batches of steps [first, last) of the order seeded by
  `seed` (`source` read by index)."""
  steps_per_epoch = len(source) // batch_size
  return np.concatenate([source.examples_at(seed, step // steps_per_epoch,
                                            (step % steps_per_epoch) * batch_size,
                                            batch_size)["payload"].numpy()
                         for step in range(first, last)])


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



def _resize_split(split, size, chunk=1024):
  """`split`'s images at `size`, resized `chunk` at a time: whole, the float32 copies
  would take about 12x the result (28 GB for CIFAR-10 at 128 pixels)."""
  images = np.empty((len(split.images), size, size, 3), np.uint8)
  for start in range(0, len(images), chunk):
    part = tf.image.resize(split.images[start:start + chunk], [size, size], antialias=True)
    images[start:start + chunk] = tf.cast(tf.round(tf.clip_by_value(part, 0, 255)), tf.uint8)
  return Arrays(images, split.labels)


# --- pipelines ----------------------------------------------------------------


def train_dataset(source, config, start_step, input_context, shard=True, *, seed=None,
                  stop_step=None):
  """The per-replica training batches of steps [start_step, stop_step) (default: to the
  end of start_step's phase, `config.phase_end`) of the run whose data is seeded by `seed`
  (default `config.seed`; a rollback's retry draws another).

  The global batch of a step is the next `config.batch_size` examples of its epoch's
  order. Each input pipeline reads and augments its share of it (seeded by (seed,
  step)) as a dict (`image` float32, `label` int32, `target` one-hot float32 over
  `config.num_classes`, `index` example ids) and yields one element per local replica,
  the order tf.distribute hands them out in. Its share: its replicas' examples, or the
  whole batch when an augmentation mixes examples across it (or `shard` is False). In
  the low-res phase (--low_res_epochs) the augmented images are then made the size of
  the step's stage (`low_res`); the steps of one pipeline are all of one size.
  """
  seed = config.seed if seed is None else seed
  steps = (start_step, config.phase_end(start_step) if stop_step is None else stop_step)
  size = config.image_size_at(start_step)
  if config.image_size_at(steps[1] - 1) != size:
    raise ValueError(f"steps [{steps[0]}, {steps[1]}) span two image sizes: the size "
                     f"changes at step {config.phase_end(steps[0])}")
  batch = config.batch_size
  steps_per_epoch = len(source) // batch
  ops = augment_lib.pipeline(config.augment, seed, config.train_steps, steps_per_epoch)
  offset, share_size = share(batch, input_context) if ops.sharded and shard else (0, batch)

  def make_batch(step, examples):
    examples = {key: value[offset:offset + share_size] for key, value in examples.items()}
    label = examples["label"]
    built = {"image": tf.cast(source.read(examples["payload"]), tf.float32), "label": label,
             "target": tf.one_hot(label, config.num_classes), "index": examples["index"]}
    step_seed = tf.stack([tf.constant(seed, tf.int64), step])
    context = ops.context(step, step // steps_per_epoch, batch, offset, share_size)
    built = ops(built, step_seed, context)
    if size != config.image_size:  # Its draws seeded as one more op's after them.
      built["image"] = low_res(built["image"], size, config.low_res_mode,
                               tf.random.experimental.stateless_fold_in(step_seed,
                                                                        len(ops.ops)),
                               context)
    return built

  if config.data_service:
    ds = _served(source, batch, seed, steps, make_batch, config.data_service)
  else:
    ds = _local(source, batch, seed, steps).map(
        make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _per_replica(ds, input_context, batch, offset).prefetch(tf.data.AUTOTUNE)


def low_res(images, size, mode, seed, context):
  """The low-res phase's size x size `images` (--low_res_mode): downscaled whole
  (`resize`), or a random crop of each at full scale (`crop`, drawn per example)."""
  if mode == "resize":
    return tf.image.resize(images, (size, size), antialias=True)
  offsets = augment_lib.uniform(seed, context, [2], 0, images.shape[1] - size + 1, tf.int32)
  rows = offsets[0][:, None] + tf.range(size)[None]  # [B, size]
  cols = offsets[1][:, None] + tf.range(size)[None]
  return tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def _local(source, batch, seed, steps):
  """(step, the global batch's examples) of the steps [first, stop) of `steps`."""
  first, stop = steps
  steps_per_epoch = len(source) // batch

  def epoch_batches(epoch, skip=0):
    return source.epoch(seed, epoch, skip).batch(batch, drop_remainder=True)

  first_epoch = first // steps_per_epoch
  num_epochs = -(-stop // steps_per_epoch)
  batches = epoch_batches(first_epoch, (first - first_epoch * steps_per_epoch) * batch)
  batches = batches.concatenate(
      tf.data.Dataset.range(first_epoch + 1, num_epochs).flat_map(epoch_batches))
  return tf.data.Dataset.zip(tf.data.Dataset.range(first, stop), batches)


SERVED_BLOCK = 16  # Steps in one split of the service's work (see _served).


def _served(source, batch, seed, steps, make_batch, service):
  """The training batches of `steps` [first, stop) made by the tf.data service's workers
  at `service`:
  the dispatcher deals out blocks of up to SERVED_BLOCK steps of one epoch, a worker
  sorts the epoch's order once for a block (not once a step: 0.36 s at ImageNet's N) and
  makes its batches, and this pipeline takes them as they come. Every step's batch is
  exactly the local one, but their order is the workers' race (so no --deterministic,
  and a resume may repeat or miss the batches in flight when the run stopped)."""
  if not isinstance(source, Indexed):
    raise DataError(f"--data_service needs data read by index (in memory or a folder's "
                    f"files); {type(source).__name__} is read shard by shard")
  start_step, stop_step = steps
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
                                  tf.minimum(last, stop_step))
    return steps.map(batch_of, num_parallel_calls=tf.data.AUTOTUNE)

  ds = tf.data.Dataset.range(block_of(start_step), block_of(stop_step - 1) + 1)
  return ds.flat_map(block_batches).apply(tf.data.experimental.service.distribute(
      tf.data.experimental.service.ShardingPolicy.DYNAMIC, service))


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
