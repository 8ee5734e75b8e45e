"""Exports a finished run and checks the export against the Keras model.

  python scripts/export.py --model_dir=RUN --format=FORMAT --output=PATH [--data_dir=DIR]

FORMAT: saved_model, keras, litert, litert_int8, onnx or tfjs. Every export takes raw
uint8 images [N, H, W, 3] and returns class probabilities; the class names are in
PATH.meta.json. The check scores the export and the Keras model on the run's
validation split (or every image of --data_dir) and prints top-1 agreement, both
accuracies and the largest probability difference; the last line is JSON. The exit
status is 1 when the agreement is below the format's threshold (docs/EXPORT.md), or,
with an `error:` line and no export, when the model's outputs are not finite.
--weights=checkpoint exports a stopped run's newest checkpoint (it has no model.keras).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

FORMATS = ("saved_model", "keras", "litert", "litert_int8", "onnx", "tfjs")
flags.DEFINE_string("model_dir", None, "a training run (its model dir)", required=True)
flags.DEFINE_enum("format", None, FORMATS, "what to export to", required=True)
flags.DEFINE_string("output", None, "file or directory to write", required=True)
flags.DEFINE_string("data_dir", "", "folder of (some of) the run's classes to check on "
                    "(default: the run's validation split)")
flags.DEFINE_integer("max_examples", 0, "check on N of the images only, drawn at random "
                     "with a fixed seed (0: all)")
flags.DEFINE_bool("skip_bad_images", False, "check on the readable images of --data_dir "
                  "and list the others (default: stop and name them)")
cli.define_weights_flag()
flags.DEFINE_enum("tta", "none", ["none", "flip", "flip_translate", "run"],
                  "test-time augmentation built into the export (run: the run's --tta, as "
                  "its evaluations scored it; each view is another forward pass)")
flags.DEFINE_bool("latency", False, "also time single-image calls of the export and of "
                  "the Keras model (median of 200)")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  from research import startup  # pylint: disable=g-import-not-at-top
  startup.import_tensorflow()  # Without its start-up noise before our lines.
  from research import data, export, predict  # pylint: disable=g-import-not-at-top
  try:
    result = export.export(FLAGS.model_dir, FLAGS.format, FLAGS.output, FLAGS.data_dir,
                           FLAGS.max_examples, FLAGS.weights, FLAGS.latency,
                           FLAGS.skip_bad_images, FLAGS.tta)
  except (export.ExportError, data.DataError, predict.NonFiniteError) as e:
    sys.exit(f"error: {e}")
  print(f"{result['format']}: {result['path']} ({result['bytes'] / 1e6:.2f} MB)")
  print(f"on {result['examples']} images (tta {result['tta']}): top-1 agreement {result['agreement']:.4f}, "
        f"accuracy {result['accuracy_export']:.4f} (Keras {result['accuracy_keras']:.4f}), "
        f"largest probability difference {result['max_probability_difference']:.2e}")
  if FLAGS.latency:
    print(f"one image: {result['latency_ms_export']:.2f} ms (Keras "
          f"{result['latency_ms_keras']:.2f} ms)")
  passed = result["agreement"] >= result["min_agreement"]
  if not passed:
    differ = round((1 - result["agreement"]) * result["examples"])
    print(f"error: agreement {result['agreement']:.4f} is below {result['min_agreement']} "
          f"for {result['format']} ({differ} of {result['examples']} images differ); the "
          f"export is kept in {result['path']} for a look: check it on more images with "
          "--data_dir=DIR, or delete it", file=sys.stderr)
  print(cli.json_line(result))
  sys.exit(0 if passed else 1)


if __name__ == "__main__":
  cli.run(main)
