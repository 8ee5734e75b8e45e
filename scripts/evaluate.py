"""Scores a run on a folder of class subfolders.

  python scripts/evaluate.py --model_dir=RUN --data_dir=DIR
  python scripts/evaluate.py --model_dir=RUN --split=validation   # a folder run's held-out split
  python scripts/evaluate.py --model_dir=RUN --data_dir=DIR --weights=checkpoint  # unfinished run

Prints top-1 accuracy and the example count; the last line is JSON:
{"accuracy": ..., "top5": ..., "examples": ..., "data_dir": ..., "split": "all"|"validation"}
Exit status 1, with an `error:` line, when the model's outputs are not finite.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

flags.DEFINE_string("model_dir", None, "a training run (its model dir)", required=True)
flags.DEFINE_string("data_dir", "", "folder of class subfolders to score (with "
                    "--split=validation, default: the run's own folder)")
flags.DEFINE_integer("batch_size", 256, "examples per forward pass")
flags.DEFINE_string("cache_dir", "", "where decoded folders are cached")
flags.DEFINE_enum("tta", None, ["none", "flip", "flip_translate"],
                  "test-time augmentation (default: the run's --tta)")
cli.define_weights_flag()
flags.DEFINE_enum("split", "all", ["all", "validation"],
                  "all: every image of --data_dir; validation: the run's held-out split of it")
flags.DEFINE_bool("skip_bad_images", False, "score the readable images of --data_dir and "
                  "list the others (default: stop and name them)")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.data_dir and FLAGS.split != "validation":
    sys.exit("error: --data_dir=DIR is needed: a folder of the run's classes to score "
             "(or --split=validation: a folder run's held-out split of its own folder)")
  from research import model_dir, startup  # pylint: disable=g-import-not-at-top
  problem = model_dir.run_problem(FLAGS.model_dir)  # Said before TensorFlow loads.
  if problem:
    sys.exit(f"error: {problem}")
  startup.import_tensorflow()  # Without its start-up noise before our lines.
  from research import data, evaluation, predict  # pylint: disable=g-import-not-at-top
  if FLAGS.batch_size < 1:
    sys.exit("error: --batch_size must be >= 1")
  try:
    result = evaluation.score_folder(FLAGS.model_dir, FLAGS.data_dir, FLAGS.batch_size,
                                     FLAGS.cache_dir, tta_mode=FLAGS.tta,
                                     weights=FLAGS.weights, split=FLAGS.split,
                                     skip_bad_images=FLAGS.skip_bad_images)
  except (data.DataError, predict.NonFiniteError) as e:
    sys.exit(f"error: {e}")
  scored = ("the validation split of " if result["split"] == "validation" else "") \
      + result["data_dir"]
  print(f"top-1 accuracy {result['accuracy']:.4f} (top-5 {result['top5']:.4f}) "
        f"on {result['examples']} images of {scored}")
  print(cli.json_line(result))


if __name__ == "__main__":
  cli.run(main)
