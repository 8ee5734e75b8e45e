"""Trains one command over several seeds, one after another, and prints the seed table.

  python scripts/seeds.py --seeds=0,1,2 --out_dir=runs/muon -- \\
      --flagfile=configs/cifar10_muon.flags --dataset=folder \\
      --data_dir=../shared/datasets/cifar10/train --val_split=0.1

Seed N trains in OUT_DIR/seed_N, its console log in OUT_DIR/seed_N.log. A seed whose run
finished is not trained again and a stopped one resumes where it stopped (train.py's
own resume), so rerunning the same command continues the queue. Then prints, in
Markdown: each seed's validation accuracy after every evaluation, the final one, the
time from the command's start to each of --marks (and the epoch), the wall time and the
peak RSS (the maximum resident set size of its train.py), and the median of the finals.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from research import startup  # noqa: E402  (no TensorFlow: it runs train.py per seed)


def parse_args(argv):
  parser = startup.ArgumentParser(
      description=__doc__.split("\n")[0],
      usage="%(prog)s [--seeds=0,1,2] --out_dir=DIR [--marks=85,90] -- TRAIN_FLAGS...")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, run in order")
  parser.add_argument("--out_dir", required=True, help="where each seed's run and log go")
  parser.add_argument("--marks", default="85,90",
                      help="validation accuracies (%%) whose time to reach is reported")
  parser.add_argument("--table_only", action="store_true",
                      help="train nothing: the table of the seeds that have finished")
  parser.add_argument("train_flags", nargs=argparse.REMAINDER,
                      help="train.py's flags, after --")
  args = parser.parse_args(argv)
  args.train_flags = [f for f in args.train_flags if f != "--"]
  try:
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.marks = [float(m) for m in args.marks.split(",")]
  except ValueError:
    parser.error("--seeds and --marks are comma-separated numbers")
  owned = [f for f in args.train_flags if f.split("=")[0] in ("--seed", "--model_dir")]
  if owned:
    flag = owned[0].split("=")[0]
    parser.error(f"{flag} is this script's to set: use "
                 f"{'--seeds' if flag == '--seed' else '--out_dir'}")
  return args


def run_dir(out_dir, seed):
  return os.path.join(out_dir, f"seed_{seed}")


def finished(out_dir, seed):
  return os.path.isfile(os.path.join(run_dir(out_dir, seed), "model.keras"))


def launches_path(out_dir, seed):
  return os.path.join(out_dir, f"seed_{seed}.launches.json")


def read_launches(out_dir, seed):
  """[{"began", "seconds", "max_rss_bytes", "exit_code"}] of each train.py of the seed."""
  try:
    with open(launches_path(out_dir, seed)) as f:
      return json.load(f)
  except FileNotFoundError:
    return []


def train_command(out_dir, seed, train_flags):
  return [sys.executable, os.path.join(ROOT, "train.py"), *train_flags, f"--seed={seed}",
          f"--model_dir={run_dir(out_dir, seed)}"]


def train(out_dir, seed, train_flags, stops):
  """Runs train.py for `seed` to its end (or resumes it); returns its launch record.
  A Ctrl-C or SIGTERM while it runs is added to `stops`."""
  began = time.time()
  with open(os.path.join(out_dir, f"seed_{seed}.log"), "a") as log:
    proc = subprocess.Popen(train_command(out_dir, seed, train_flags), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)

    # Ctrl-C reaches train.py from the terminal, a SIGTERM is passed on: either way
    # train.py saves a checkpoint and exits, and this waits for it. If train.py was
    # finishing anyway, it exits 0, and the stop is still the queue's.
    def stop(number, frame):
      del frame
      stops.append(signal.Signals(number).name)
      if number == signal.SIGTERM:
        proc.send_signal(signal.SIGTERM)
    previous = {number: signal.signal(number, stop)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
      # wait4, not wait: the resource usage of this child alone.
      _, status, usage = os.wait4(proc.pid, 0)
    finally:
      for number, handler in previous.items():
        signal.signal(number, handler)
  proc.returncode = os.waitstatus_to_exitcode(status)
  launch = {"began": began, "seconds": time.time() - began,
            "max_rss_bytes": usage.ru_maxrss * 1024, "exit_code": proc.returncode}
  launches = read_launches(out_dir, seed) + [launch]
  with open(launches_path(out_dir, seed), "w") as f:
    json.dump(launches, f, indent=1)
  return launch


def format_seconds(seconds):
  minutes, seconds = divmod(round(seconds), 60)
  return f"{minutes}m{seconds:02d}s"


def seed_row(out_dir, seed, marks):
  """The table's cells for a finished seed, and its final accuracy (%)."""
  if "tensorflow" not in sys.modules:  # Read here only, without its start-up noise.
    startup.import_tensorflow(init_devices=False)
  from research import events  # pylint: disable=g-import-not-at-top
  path = run_dir(out_dir, seed)
  with open(os.path.join(path, "config.json")) as f:
    steps_per_epoch = json.load(f)["steps_per_epoch"]
  evals = events.timed_scalar(os.path.join(path, "eval"), "accuracy")
  if not evals:
    return None, None
  launches = read_launches(out_dir, seed)
  accuracies = ", ".join(f"{100 * value:.2f}" for _, _, value in evals)
  final = 100 * evals[-1][2]
  cells = [str(seed), accuracies, f"**{final:.2f}%**"]
  for mark in marks:
    reached = next(((step, wall) for step, wall, value in evals if 100 * value >= mark), None)
    if reached is None:
      cells.append("not reached")
    elif len(launches) != 1:  # Resumed, or trained without this script: no one clock.
      cells.append(f"epoch {reached[0] / steps_per_epoch:g}")
    else:
      cells.append(f"{format_seconds(reached[1] - launches[0]['began'])} "
                   f"(epoch {reached[0] / steps_per_epoch:g})")
  if launches:
    cells.append(format_seconds(sum(launch["seconds"] for launch in launches))
                 + ("" if len(launches) == 1 else f" ({len(launches)} launches)"))
    cells.append(f"{max(launch['max_rss_bytes'] for launch in launches) / 2**30:.1f} GiB")
  else:
    cells += ["?", "?"]
  return cells, final


def table(out_dir, seeds, marks):
  """The Markdown seed table of the finished seeds among `seeds`, and their median."""
  header = (["seed", "validation accuracy after each evaluation (%)", "final"]
            + [f"time to {mark:g}%" for mark in marks] + ["wall", "peak RSS"])
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  finals = []
  for seed in seeds:
    cells, final = seed_row(out_dir, seed, marks) if finished(out_dir, seed) else (None, None)
    if cells is None:
      lines.append(f"| {seed} | not finished |" + " |" * (len(header) - 2))
      continue
    lines.append("| " + " | ".join(cells) + " |")
    finals.append(final)
  if finals:
    lines.append(f"\nmedian of {len(finals)}: {statistics.median(finals):.2f}% "
                 f"({min(finals):.2f}-{max(finals):.2f})")
  return "\n".join(lines)


def main(argv):
  args = parse_args(argv)
  try:
    os.makedirs(args.out_dir, exist_ok=True)
  except OSError as e:
    sys.exit(f"error: --out_dir={args.out_dir}: {e.strerror}")
  for seed in [] if args.table_only else args.seeds:
    if finished(args.out_dir, seed):
      print(f"seed {seed}: finished before, in {run_dir(args.out_dir, seed)}", flush=True)
      continue
    print(f"seed {seed}: training in {run_dir(args.out_dir, seed)} "
          f"(log: {args.out_dir}/seed_{seed}.log)", flush=True)
    stops = []
    launch = train(args.out_dir, seed, args.train_flags, stops)
    if launch["exit_code"] != 0:
      stopped = "; rerun the same command to resume it" if launch["exit_code"] == 75 else ""
      sys.exit(f"error: seed {seed}'s train.py exited with {launch['exit_code']} after "
               f"{format_seconds(launch['seconds'])}: see {args.out_dir}/seed_{seed}.log"
               + stopped)
    if stops:
      sys.exit(f"error: stopped by {stops[0]} as seed {seed} finished; rerun the same "
               "command to go on with the next seed")
  print(table(args.out_dir, args.seeds, args.marks))


if __name__ == "__main__":
  main(sys.argv[1:])
