"""scripts/seeds.py: one command over several seeds, and its seed table."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from scripts import seeds
from tests.conftest import ROOT

TINY = ["--dataset=synthetic", "--synthetic_examples=128", "--image_size=32",
        "--model=baseline_cnn", "--batch_size=32", "--train_steps=6", "--eval_every=3",
        "--hooks=none", "--precision=float32"]


def test_a_seed_trains_once_and_its_row_shows_what_its_run_logged(tmp_path, capsys):
  out = tmp_path / "seeds"
  command = ["--seeds=7", f"--out_dir={out}", "--marks=0,101", "--", *TINY]
  seeds.main(command)  # train.py runs in a subprocess, as from the command line.
  stdout = capsys.readouterr().out
  log = (out / "seed_7.log").read_text()
  logged = [float(a) for a in re.findall(r"eval at step \d+: .* accuracy ([0-9.]+)", log)]
  assert len(logged) == 2
  config = json.loads((out / "seed_7" / "config.json").read_text())
  assert config["seed"] == 7
  row = next(line for line in stdout.splitlines() if line.startswith("| 7 |"))
  cells = [cell.strip() for cell in row.strip("|").split("|")]
  assert cells[1] == ", ".join(f"{100 * a:.2f}" for a in logged)
  assert cells[2] == f"**{100 * logged[-1]:.2f}%**"
  first_eval_epoch = 3 / config["steps_per_epoch"]
  assert re.fullmatch(rf"\d+m\d\ds \(epoch {first_eval_epoch:g}\)", cells[3])
  assert cells[4] == "not reached"
  assert re.fullmatch(r"\d+\.\d GiB", cells[6]) and float(cells[6].split()[0]) > 0.1
  assert f"median of 1: {100 * logged[-1]:.2f}%" in stdout

  # The same command again trains nothing: the queue goes on from where it is.
  seeds.main(command)
  again = capsys.readouterr().out
  assert "seed 7: finished before" in again
  assert (out / "seed_7.log").read_text() == log
  assert len(json.loads((out / "seed_7.launches.json").read_text())) == 1
  assert row in again


def test_a_failing_seed_stops_the_queue_with_its_log_named(tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    seeds.main(["--seeds=0,1", f"--out_dir={tmp_path}", "--", "--no_such_flag"])
  message = str(exit_info.value.code)
  assert message.startswith("error: seed 0's train.py exited with 1 after")
  assert f"see {tmp_path}/seed_0.log" in message
  assert not (tmp_path / "seed_1.log").exists()


@pytest.mark.parametrize("args, message", [
    (["--out_dir=x", "--", "--seed=3"], "--seed is this script's to set"),
    (["--out_dir=x", "--", "--model_dir=y"], "--model_dir is this script's to set"),
    (["--out_dir=x", "--seeds=0,a"], "comma-separated numbers"),
    (["--seeds=0"], "the following arguments are required: --out_dir"),
])
def test_bad_arguments_are_one_error(capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    seeds.parse_args(args)
  error = exit_info.value.code  # sys.exit's message: printed, and the exit status is 1.
  assert error.startswith("error: ") and message in error and "\n" not in error
  assert not capsys.readouterr().err  # No usage line before it.


def test_an_out_dir_that_cannot_be_made_is_one_error(tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(SystemExit, match="error: --out_dir=.*a_file/seeds: Not a directory"):
    seeds.main([f"--out_dir={tmp_path}/a_file/seeds", "--", "--dataset=synthetic"])


def test_ctrl_c_and_sigterm_stop_a_seed_that_the_same_command_resumes(tmp_path):
  """Ctrl-C at a terminal (SIGINT to the whole process group) and a SIGTERM to the script
  alone both reach train.py, which saves a checkpoint; the script reports it and the same
  command resumes the seed."""
  out = tmp_path / "seeds"
  command = [sys.executable, os.path.join(ROOT, "scripts", "seeds.py"), "--seeds=0",
             f"--out_dir={out}", "--", *TINY, "--train_steps=40", "--steps_per_loop=1",
             "--log_every=1", "--checkpoint_every=50"]
  log = out / "seed_0.log"

  def stop_at(step, send):
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while f"step {step}/40" not in (log.read_text() if log.exists() else ""):
      assert proc.poll() is None, proc.communicate()
      time.sleep(0.2)
    send(proc)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr

  status, stderr = stop_at(5, lambda proc: os.killpg(proc.pid, signal.SIGINT))
  assert status == 1 and "error: seed 0's train.py exited with 75" in stderr, stderr
  assert "rerun the same command to resume it" in stderr
  status, stderr = stop_at(15, lambda proc: proc.send_signal(signal.SIGTERM))
  assert status == 1 and "exited with 75" in stderr, stderr

  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  resumes = [int(s) for s in re.findall(r"resumed at step (\d+)", log.read_text())]
  assert len(resumes) == 2 and 5 <= resumes[0] < 15 <= resumes[1] < 40
  launches = json.loads((out / "seed_0.launches.json").read_text())
  assert [launch["exit_code"] for launch in launches] == [75, 75, 0]
  row = next(line for line in done.stdout.splitlines() if line.startswith("| 0 |"))
  assert "(3 launches)" in row


def test_a_stop_as_a_seed_finishes_stops_the_queue(tmp_path, monkeypatch):
  # train.py past its loop finishes and exits 0 whatever the signal: the next seed must
  # not start. A stand-in that ignores SIGTERM and exits 0 plays that train.py.
  stand_in = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3)"
  monkeypatch.setattr(seeds, "train_command", lambda *_: [sys.executable, "-c", stand_in])
  threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
  with pytest.raises(SystemExit) as exit_info:
    seeds.main(["--seeds=0,1", f"--out_dir={tmp_path}", "--", *TINY])
  assert str(exit_info.value.code) == (
      "error: stopped by SIGTERM as seed 0 finished; rerun the same command to go on "
      "with the next seed")
  assert json.loads((tmp_path / "seed_0.launches.json").read_text())[0]["exit_code"] == 0
  assert not (tmp_path / "seed_1.log").exists()
