"""A folder's images decoded into memory once and cached as .npz, or streamed from their
files: the choice of --data_cache (auto: by the decoded size against the memory)."""

import hashlib
import os

from absl import logging
import numpy as np

from research import files
from research.footprint import available_memory
from research.sources import DataError
from research.sources.folder import list_folder
from research.sources.images import Files, decode_images, looks_readable
from research.sources.memory import Arrays

# --data_cache=auto decodes a folder into memory when the images take at most this
# fraction of the memory available (the rest: the model, a second copy while caching).
_MEMORY_FRACTION = 0.25


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
  ok = np.array([looks_readable(p) for p in paths], bool)
  readable = _drop_unreadable(paths, labels, names, ok, config.skip_bad_images)
  return _listed(Files(np.asarray(paths, object)[ok], readable, config.image_size),
                 data_dir, paths, labels, ok), names


def _listed(source, data_dir, paths, labels, ok):
  """`source` of a listing's readable files, knowing the listing's files and, if some
  were not readable, its labels."""
  source.listed_files = [os.path.relpath(p, data_dir) for p in paths]
  if not ok.all():
    source.listing = (labels, ok)
  return source


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
  return _listed(Arrays(images if ok.all() else images[ok], readable), data_dir, paths,
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


