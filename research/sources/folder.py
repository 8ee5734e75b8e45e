"""A folder of class subfolders, listed: the image files training reads, each once.

DIR/<class>/<image>, class folders sorted by name; hidden files and folders, files of
types not read and links that lead to files listed already are left out (and named in
a warning); a folder that cannot be listed, or no images at all, is a DataError. The
listing reads no image: research/sources/cache.py decodes it into memory, and
research/sources/images.py streams its files.
"""

import collections
import os

from absl import logging
import numpy as np

from research.sources import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


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


