"""Makes a folder of class subfolders from some classes and images of another, as links.

  python scripts/subset_folder.py --data_dir=DIR --output=OUT --classes=cat,dog \
      [--skip=0] [--count=500]

Per class, the images are taken in the order training reads them (sorted, subfolders
included, hidden files and non-images left out): `--skip` first ones left out, then
`--count` of them (0: all the rest). The same command always picks the same images, so
two calls with `--skip` and `--count` that do not overlap make disjoint train and test
folders. Files are symbolic links: nothing is copied. The last line is JSON:
{"output": ..., "classes": ..., "images": ...}
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

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
  """Links the chosen images of `classes` into `output`; returns how many. Every pick is
  checked before anything is made."""
  from research.sources.folder import list_folder  # pylint: disable=g-import-not-at-top
  paths, labels, names = list_folder(str(data_dir))  # The images training reads.
  missing = [c for c in classes if c not in names]
  if missing:
    raise ValueError(f"no class folder {', '.join(missing)} in {data_dir} "
                     f"(it has: {', '.join(names)})")
  if os.path.exists(output) and os.listdir(output):
    raise ValueError(f"--output {output} exists and is not empty")
  chosen = {}
  for name in classes or names:
    images = [p for p, label in zip(paths, labels) if names[label] == name][skip:]
    chosen[name] = images[:count] if count else images
    if not chosen[name]:
      raise ValueError(f"class {name} has no images left after --skip={skip}")
  for name, images in chosen.items():
    for path in images:  # Kept at its place under the class folder: names stay unique.
      link = os.path.join(output, name, os.path.relpath(path, os.path.join(data_dir, name)))
      os.makedirs(os.path.dirname(link), exist_ok=True)
      os.symlink(os.path.abspath(path), link)
  return sum(map(len, chosen.values()))


def main(argv):
  del argv
  if FLAGS.skip < 0 or FLAGS.count < 0:
    sys.exit("error: --skip and --count must be >= 0")
  from research import startup  # pylint: disable=g-import-not-at-top
  startup.import_tensorflow()  # Without its start-up noise before the script's lines.
  try:
    images = subset(FLAGS.data_dir, FLAGS.output, FLAGS.classes, FLAGS.skip, FLAGS.count)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  classes = FLAGS.classes or sorted(os.listdir(FLAGS.output))
  print(f"linked {images} images of {len(classes)} classes into {FLAGS.output}")
  print(cli.json_line({"output": FLAGS.output, "classes": classes, "images": images}))


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
