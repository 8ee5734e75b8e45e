"""Makes a folder of class subfolders from some classes and images of another, as links.

  python scripts/subset_folder.py --data_dir=DIR --output=OUT --classes=cat,dog \
      [--skip=0] [--count=500]

Per class, the files are taken in sorted order: `--skip` first ones left out, then
`--count` of them (0: all the rest). The same command always picks the same images, so
two calls with `--skip` and `--count` that do not overlap make disjoint train and test
folders. Files are symbolic links: nothing is copied. The last line is JSON:
{"output": ..., "classes": ..., "images": ...}
"""

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
  """Only when run as a script: tests import `subset` beside other flag owners."""
  flags.DEFINE_string("data_dir", None, "folder of class subfolders", required=True)
  flags.DEFINE_string("output", None, "new folder to make", required=True)
  flags.DEFINE_list("classes", [], "class subfolders to take (default: all)")
  flags.DEFINE_integer("skip", 0, "files left out at the start of each class, in sorted "
                       "order")
  flags.DEFINE_integer("count", 0, "files taken per class after the skipped ones (0: all)")


def subset(data_dir, output, classes, skip=0, count=0):
  """Links the chosen files of `classes` into `output`; returns the number of images."""
  available = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
  missing = [c for c in classes if c not in available]
  if missing:
    raise ValueError(f"no class folder {', '.join(missing)} in {data_dir} "
                     f"(it has: {', '.join(available)})")
  if os.path.exists(output) and os.listdir(output):
    raise ValueError(f"--output {output} exists and is not empty")
  total = 0
  for name in classes or available:
    source = os.path.join(os.path.abspath(data_dir), name)
    chosen = sorted(f for f in os.listdir(source) if not f.startswith("."))[skip:]
    chosen = chosen[:count] if count else chosen
    if not chosen:
      raise ValueError(f"class {name} has no files left after --skip={skip}")
    os.makedirs(os.path.join(output, name))
    for filename in chosen:
      os.symlink(os.path.join(source, filename), os.path.join(output, name, filename))
    total += len(chosen)
  return total


def main(argv):
  del argv
  if FLAGS.skip < 0 or FLAGS.count < 0:
    sys.exit("error: --skip and --count must be >= 0")
  try:
    images = subset(FLAGS.data_dir, FLAGS.output, FLAGS.classes, FLAGS.skip, FLAGS.count)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  classes = FLAGS.classes or sorted(os.listdir(FLAGS.output))
  print(f"linked {images} images of {len(classes)} classes into {FLAGS.output}")
  print(json.dumps({"output": FLAGS.output, "classes": classes, "images": images}))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
