"""Writes a dataset as a record set: sharded TFRecords that train in bounded memory.

  python scripts/make_tfrecords.py --data_dir=FOLDER --output=OUT --shards=16
  python scripts/make_tfrecords.py --dataset=tfds:cifar10 --output=OUT
  python train.py --dataset=tfrecord --data_dir=OUT ...

A folder's files are stored byte for byte (nothing is re-encoded, so training decodes
exactly what it would from the folder); images of other datasets are stored as PNG. The
last line is JSON: {"output": ..., "examples": ..., "shards": ...}.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

FLAGS = flags.FLAGS
SHARD_BYTES = 128 << 20  # --shards=0: shards of about this much encoded data


def _define_flags():
  """Only when run as a script: tests import `make` beside other flag owners."""
  flags.DEFINE_string("dataset", "folder", "folder, cifar10, cifar100, synthetic, tfrecord "
                      "(to reshard) or tfds:NAME")
  flags.DEFINE_string("data_dir", "", "the folder (class subfolders), record set, or "
                      "prepared TFDS data dir")
  flags.DEFINE_string("output", None, "new directory for the record set", required=True)
  flags.DEFINE_integer("shards", 0, "number of shards (0: about one per 128 MB)")
  flags.DEFINE_string("split", "train", "the TFDS split to write")
  flags.DEFINE_integer("image_size", 32, "size of the images of in-memory datasets "
                       "(folders and TFDS datasets keep their files' bytes)")
  flags.DEFINE_bool("skip_bad_images", False, "leave out a folder's unreadable files "
                    "(default: stop and name them)")


def make(dataset, data_dir, output, shards=0, split="train", image_size=32,
         skip_bad_images=False, log=print):
  """Writes the record set; returns (examples, shards). Raises DataError, ValueError."""
  from research import data  # pylint: disable=g-import-not-at-top
  from research.config import Config  # pylint: disable=g-import-not-at-top
  from research.sources import records  # pylint: disable=g-import-not-at-top
  from research.sources import tfds as tfds_source  # pylint: disable=g-import-not-at-top
  if "://" in output:  # Shards are written beside their final names, then renamed.
    raise ValueError(f"--output {output}: write the record set to a local directory, then "
                     "copy it (gsutil -m cp -r DIR gs://...); training reads it there")
  if os.path.exists(output) and os.listdir(output):
    raise ValueError(f"--output {output} exists and is not empty")
  if dataset.startswith(tfds_source.PREFIX):
    builder = tfds_source.builder(dataset[len(tfds_source.PREFIX):], data_dir)
    examples, names = tfds_source.encoded(builder, split), tfds_source.class_names(builder)
    known = builder.info.splits[split].num_bytes if builder.info.splits else 0
  else:
    config = Config(dataset=dataset, data_dir=data_dir, image_size=image_size,
                    data_cache="none", skip_bad_images=skip_bad_images)
    source, _, names = data.dataset_of(config).open()
    if dataset == "folder":  # Streamed files (--data_cache=none), stored as they are.
      known = sum(os.path.getsize(p) for p in source.paths)
    else:
      known = len(source) * image_size ** 2 * 3 // 2  # PNG: about half the raw bytes.
    examples = records.examples_of(source)
  shards = shards or max(1, -(-known // SHARD_BYTES))
  written = records.write(output, examples, names, shards, log=log)
  return sum(s["count"] for s in written), shards


def main(argv):
  del argv
  from research import startup  # pylint: disable=g-import-not-at-top
  startup.import_tensorflow()
  from research import data  # pylint: disable=g-import-not-at-top
  try:
    examples, shards = make(FLAGS.dataset, FLAGS.data_dir, FLAGS.output, FLAGS.shards,
                            FLAGS.split, FLAGS.image_size, FLAGS.skip_bad_images)
  except (data.DataError, OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(cli.json_line({"output": FLAGS.output, "examples": examples, "shards": shards}))


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
