"""Time to accuracy of the classic tutorial's improved CNN, trained the tutorial's way
(`model.fit`, Keras preprocessing-layer augmentation, SGD 0.001 + momentum 0.9,
batch 64), on the same validation split as train.py. A long benchmark (about 45
minutes for 50 epochs on 2 CPU cores): run once and record, not in CI.

  python scripts/tutorial_fit.py --data_dir=../shared/datasets/cifar10/train

Prints one line per epoch; the last line is JSON with the seconds at which each
--targets accuracy was first reached (null if never).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

flags.DEFINE_string("data_dir", None, "folder of class subfolders", required=True)
flags.DEFINE_integer("epochs", 50, "the tutorial's budget")
flags.DEFINE_integer("batch_size", 64, "the tutorial's batch size")
flags.DEFINE_float("val_split", 0.1, "held-out fraction (train.py's split)")
flags.DEFINE_enum("precision", "mixed_bfloat16", ["float32", "mixed_bfloat16"],
                  "Keras dtype policy (the tutorial itself ran float32)")
flags.DEFINE_list("targets", ["0.8", "0.85"], "validation accuracies to time")
flags.DEFINE_string("cache_dir", "", "where decoded folders are cached")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not os.path.isdir(FLAGS.data_dir):  # Said at once, not after TensorFlow loads.
    sys.exit(f"error: --data_dir {FLAGS.data_dir!r} is not a directory")
  from research import data  # pylint: disable=g-import-not-at-top
  from scripts import benchmark_lib as benchmark  # pylint: disable=g-import-not-at-top
  try:
    split, _ = data.load_folder(FLAGS.data_dir, 32, FLAGS.cache_dir)
    train, val = data.split_validation(split, FLAGS.val_split)
    targets = [float(t) for t in FLAGS.targets]
  except (data.DataError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"tutorial improved CNN, model.fit: {len(train)} train / {len(val)} validation, "
        f"batch {FLAGS.batch_size}, {FLAGS.epochs} epochs, {FLAGS.precision}")
  print(cli.json_line(benchmark.tutorial_fit(train, val, FLAGS.epochs, FLAGS.batch_size,
                                             precision=FLAGS.precision, targets=targets)))


if __name__ == "__main__":
  cli.run(main)
