"""The model dir: usable before any data is read, one run at a time, changes refused.

`Lock` makes a second training on the same dir stop with one line naming the first.
`check_config` refuses a resume whose config would silently change the experiment
(the data order, the model, the optimization); `record` keeps every config a dir was
trained with in `config_history.jsonl`. `check_listing` refuses a resume from a folder
that gained or lost files (its validation split would be drawn again), against the
listing `record_listing` keeps in `data_listing.json`.
"""

import base64
import collections

import dataclasses
import datetime
import errno
import fcntl
import glob
import json
import os
import hashlib
import socket
import zlib

from absl import logging

from research import files
from research.config import CHECKPOINT_FIELDS, PATH_FIELDS, Config, ConfigError, local_path

LOCK_FILE = "lock"
HISTORY_FILE = "config_history.jsonl"
LISTING_FILE = "data_listing.json"

# Fields a resumed run may change freely: where and how it runs, how long, what it
# logs. Any other field changes the experiment (--allow_config_change lets it), and a
# CHECKPOINT_FIELDS change cannot load at all.
RUN_FIELDS = frozenset((
    "strategy", "cpu_devices", "jit_compile", "precision", "deterministic", "model_dir",
    "cache_dir", "skip_bad_images", "epochs", "train_steps", "eval_batch_size",
    "steps_per_loop", "loop_seconds", "progress_seconds", "eval_every", "log_every",
    "checkpoint_every", "keep_checkpoints", "on_nan", "nan_retries", "inject_nan_step",
    "max_skipped_fraction",
    "hooks", "actions", "plugins", "metrics", "probes", "tta", "tta_final_only", "eval_data_dir",
    "allow_config_change", "allow_data_change", "cluster_resolver", "port_base",
    "data_cache", "data_service",  # The same batches (data_service: in another order).
    "weights", "init_from", "init_weights",  # These only act at a fresh start.
    "model_defaults"))  # A record: the fields it names are compared themselves.


def prepare(path):
  """Creates `path`, or says in one line why it cannot hold a run."""
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise ConfigError(f"--model_dir {path!r} is a file, not a directory") from None
  except OSError as e:
    raise ConfigError(f"--model_dir {path!r} cannot be created: {e.strerror}") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise ConfigError(f"--model_dir {path!r} is not writable")


def run_problem(path):
  """Why `path` holds no run to read (evaluation.load_run), in one line; None if it has
  its config.json. Needs no TensorFlow: the scripts say it before loading it."""
  if not os.path.isdir(path):
    return f"run dir {path!r} " + (
        "is a file, not a run's model dir" if os.path.exists(path) else "does not exist")
  if not os.path.exists(os.path.join(path, "config.json")):
    return f"{path!r} holds no training run (no config.json)"
  return None


class Lock:
  """An exclusive lock on a model dir, released when the process ends however it ends.

  The kernel holds the lock (flock on `lock`); the file names the holder for the
  message. A file left by a killed run is free to take and is taken over with a
  warning. flock may not reach across hosts on a network filesystem; multi-worker
  runs lock from the chief only.
  """

  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILE)
    self._fd = None

  def __enter__(self):
    prepare(self.model_dir)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise ConfigError(f"model dir {self.model_dir!r} is in use by {_describe(holder)}; "
                        "wait for that run, stop it, or use another --model_dir") from None
    previous = _read_holder(fd)
    if previous:
      logging.warning("model dir %s: taking over the lock of %s, which is no longer "
                      "running", self.model_dir, _describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().isoformat(timespec="seconds")}).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    os.ftruncate(self._fd, 0)  # An empty file is a free lock; the file stays.
    os.close(self._fd)  # Closing releases the flock.
    self._fd = None


def _read_holder(fd):
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"null")
  except ValueError:
    return {"holder": "an unreadable lock file"}


def _describe(holder):
  if not holder or "pid" not in holder:
    return "another process"
  return (f"pid {holder['pid']} on {holder.get('host', '?')} "
          f"(started {holder.get('started', '?')})")


def check_config(config):
  """Compares resolved `config` with the one the model dir was trained with.

  Returns the changed run fields for the log; raises ConfigError on a checkpoint
  field, or on an experiment field unless --allow_config_change.
  """
  path = os.path.join(config.model_dir, "config.json")
  if not os.path.exists(path):
    return []
  saved = Config.load(path)
  changed = [f.name for f in dataclasses.fields(Config)
             if not _same(f.name, getattr(saved, f.name), getattr(config, f.name))]
  describe = lambda name: (f"{name}: {getattr(saved, name)!r} in the model dir, "
                           f"{getattr(config, name)!r} now")
  unloadable = config.checkpoint_differences(saved)
  if unloadable:
    raise ConfigError(f"model dir {config.model_dir!r} holds a different run ("
                      + "; ".join(unloadable) + "); use another --model_dir")
  experiment = [describe(n) for n in changed
                if n not in RUN_FIELDS and n not in CHECKPOINT_FIELDS]
  if experiment and not config.allow_config_change:
    raise ConfigError(f"model dir {config.model_dir!r} was trained with another config ("
                      + "; ".join(experiment) + "); resuming would change the experiment. "
                      "Use another --model_dir, or --allow_config_change to go on")
  return [describe(n) for n in changed if n in RUN_FIELDS or config.allow_config_change]


def _same(name, saved, now):
  """Equal values; paths equal when they name the same directory (a recorded path may
  be relative, to where its run was started)."""
  if saved == now:
    return True
  if name not in PATH_FIELDS or not saved or not now or "://" in saved + now:
    return False
  return os.path.realpath(local_path(saved)) == os.path.realpath(local_path(now))


def schedule_jump(config, update, rate):
  """A warning when a resume changes the run's length under a decaying schedule (it
  decays over the whole run, so the rate jumps), or None; before `record`. `rate(config,
  update)` is the learning rate of a config's schedule at an update."""
  saved = Config.load(os.path.join(config.model_dir, "config.json"))
  if saved.train_steps == config.train_steps:
    return None
  before, after = rate(saved, update), rate(config, update)
  if abs(before - after) <= 1e-6 * max(abs(before), abs(after)):
    return None
  return (f"--train_steps {saved.train_steps} -> {config.train_steps}: the {config.schedule} "
          f"schedule decays over the whole run, so its learning rate jumps from "
          f"{before:.4g} to {after:.4g} here, and the rest is neither run's (a fresh "
          "--model_dir trains the new length as one schedule)")


def record(config, step):
  """Saves `config` as the dir's config.json and appends it to the history."""
  config.save(os.path.join(config.model_dir, "config.json"))
  entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "step": step,
           "config": config.to_dict()}
  with open(os.path.join(config.model_dir, HISTORY_FILE), "a") as f:
    f.write(json.dumps(entry, sort_keys=True) + "\n")


def record_listing(config, listing):
  """Keeps a folder's `listing` (its files, relative to it) in the model dir: their
  count, per class, a hash and the compressed list, to name what a resume adds or loses."""
  path = os.path.join(config.model_dir, LISTING_FILE)
  if listing is None or _saved_listing(path).get("sha256") == _digest(listing):
    return
  joined = "\n".join(listing).encode()
  files.write_json(path, {
      "data_dir": config.data_dir, "count": len(listing), "sha256": _digest(listing),
      "classes": collections.Counter(p.split(os.sep, 1)[0] for p in listing),
      "files": base64.b64encode(zlib.compress(joined, 6)).decode()})


def check_listing(config, listing):
  """Raises ConfigError when the model dir holds a checkpoint of a run on a folder whose
  `listing` has changed since (unless --allow_data_change): its validation split and
  epoch order would be drawn again, and the resumed run could evaluate on images it
  trained on. Returns a warning naming an allowed change, else None."""
  if not glob.glob(os.path.join(config.model_dir, "checkpoints", "ckpt-*.index")):
    return None
  change = listing_change(config.model_dir, config.data_dir, listing)
  if not change or config.allow_data_change:
    return change and change + "; going on with the new listing (--allow_data_change)"
  raise ConfigError(f"{change}. The validation split and the data order would be drawn "
                    "again, and the resumed run could evaluate on images it trained on. "
                    "Restore the folder, train in another --model_dir, or pass "
                    "--allow_data_change to go on with it")


def listing_change(model_dir, data_dir, listing):
  """What was added to and removed from the folder `data_dir` since the run in
  `model_dir` recorded its listing, now `listing`; None if nothing (or no record)."""
  saved = _saved_listing(os.path.join(model_dir, LISTING_FILE))
  if listing is None or not saved or saved["sha256"] == _digest(listing):
    return None
  before = zlib.decompress(base64.b64decode(saved["files"])).decode().split("\n")
  added, removed = sorted(set(listing) - set(before)), sorted(set(before) - set(listing))
  return (f"--data_dir {data_dir!r} has changed since this model dir's run started: "
          f"{len(added)} file(s) added and {len(removed)} removed of "
          f"{saved['count']}{_examples(added, removed)}")


def _digest(listing):
  return hashlib.sha256("\n".join(listing).encode()).hexdigest()


def _saved_listing(path):
  """The model dir's recorded listing, or {} if it has none (a run older than it) or
  one cut short (it is written again)."""
  try:
    with open(path) as f:
      saved = json.load(f)
    return saved if {"sha256", "count", "files"} <= set(saved) else {}
  except (FileNotFoundError, ValueError):
    return {}


def _examples(added, removed):
  named = [f"{p} added" for p in added[:2]] + [f"{p} removed" for p in removed[:2]]
  return f" ({', '.join(named)}{' ...' if len(added) + len(removed) > len(named) else ''})" \
      if named else " (the same files, listed in another order)"
