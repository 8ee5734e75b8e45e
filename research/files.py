"""Files written whole or not at all: a kill mid-write leaves the previous version."""

import contextlib
import json
import os


@contextlib.contextmanager
def replacing(path):
  """Yields a temporary path beside `path` (same extension); on success it replaces
  `path` in one rename, on failure it is removed."""
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp-{os.getpid()}{ext}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path, text):
  with replacing(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path, value):
  write_text(path, json.dumps(value, indent=2) + "\n")
