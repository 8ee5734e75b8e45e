"""scripts/benchmark.py at tiny sizes: every headline figure exists, finite and
positive, and the table prints. No timing targets: this machine's speed is not tested."""

import json
import os

import pytest

from research import config as config_lib, data, plugins
from research.sources.datasets import synthetic
from scripts import benchmark_lib as benchmark, peer_lib
from tests.test_cli import run

KEYS = ("fit_ratio", "fit_default_ratio", "bf16_speedup", "utilization_bf16",
        "utilization_fp32", "pipeline_ratio", "pipeline_vs_tutorial")


def test_quick_script_prints_table_then_json_last():
  result = run("scripts/benchmark.py", "--quick")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  summary = json.loads(lines[-1])
  for key in KEYS:
    assert benchmark.is_finite_positive(summary[key]), (key, summary[key])
  assert set(summary["per_model"]) == {"resnet8"}
  assert "| measurement | value |" in result.stdout
  assert "| peak RSS MiB (whole run) |" in result.stdout
  assert "pipeline tutorial (keras layers)" in result.stdout


def test_loop_vs_fit_row_has_both_rates_and_their_ratios():
  settings = benchmark.Settings.quick(models=("baseline_cnn",), repeats=1)
  row = benchmark.loop_vs_fit(settings, "baseline_cnn", log=lambda line: None)
  assert set(row) == {"loop", "fit", "fit_default", "ratio", "default_ratio"}
  assert all(benchmark.is_finite_positive(v) for v in row.values())
  assert row["ratio"] == row["loop"] / row["fit"]


def test_peak_matmul_rate_is_finite_and_positive():
  rate = benchmark.peak_matmul_flops(32, "float32", repeats=1)
  assert benchmark.is_finite_positive(rate)


def test_format_table_lists_rows_and_headline_ratios():
  table = benchmark.format_table([("a", "1")], {"fit_ratio": 1.25, "peak_rss_mib": 9.0})
  assert "| a | 1 |" in table
  assert "| **fit_ratio** | 1.250 |" in table
  assert "peak_rss_mib" not in table


def test_tutorial_fit_records_time_to_each_target():
  split, _ = synthetic(96, 32, 10, seed=0)
  train, val = data.split_validation(split, 0.25)
  record = benchmark.tutorial_fit(train, val, epochs=2, batch_size=32, precision="float32",
                                  targets=(0.0, 1.01), log=lambda line: None)
  assert [e["epoch"] for e in record["epochs"]] == [1, 2]
  assert record["reached"]["0.0"] == {"epoch": 1, "seconds": record["epochs"][0]["seconds"]}
  assert record["reached"]["1.01"] is None  # Never reached.
  assert record["final_val_accuracy"] == record["epochs"][-1]["val_accuracy"]


def test_tutorial_fit_script_refuses_a_missing_folder(tmp_path):
  result = run("scripts/tutorial_fit.py", f"--data_dir={tmp_path / 'nowhere'}")
  assert result.returncode != 0
  assert "error:" in result.stderr


def test_the_benchmark_times_the_flagfiles_recipe():
  recipe = plugins.from_flagfile(benchmark.FAST_RECIPE_FLAGS)
  timed = benchmark.airbench_config(benchmark.Settings.quick(), "float32")
  for field in ("model", "augment", "loss", "optimizer", "momentum", "weight_decay",
                "param_rules", "lookahead_every", "tta"):
    assert getattr(timed, field) == getattr(recipe, field), field
  assert timed.batch_size == 8 and timed.precision == "float32"


# --- scripts/peer_benchmark.py: against PyTorch ----------------------------------------


def torch_python():
  """A python that imports torch (PEER_TORCH_PYTHON, else /work/torch-venv's), or skip."""
  for python in (os.environ.get("PEER_TORCH_PYTHON"), "/work/torch-venv/bin/python"):
    if python and peer_lib.torch_version(python)[0]:
      return python
  pytest.skip("no python that imports torch (PEER_TORCH_PYTHON, /work/torch-venv)")


def test_peer_benchmark_without_torch_says_how_to_get_it_and_exits_3():
  result = run("scripts/peer_benchmark.py", "--quick", "--torch_python=/no/such/python")
  assert result.returncode == 3, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("skipped: PyTorch not found (/no/such/python")
  assert "pip install torch==2.13.0" in lines[0]


@pytest.mark.parametrize("flag, message", [
    ("--networks=vgg", "error: --networks: unknown vgg; known: airbench, resnet20"),
    ("--batch_size=0", "error: --batch_size must be >= 1, got 0"),
    ("--image_size=8", "error: --image_size must be >= 9"),
    ("--networks=", "error: --networks: name at least one of: airbench, resnet20"),
])
def test_peer_benchmark_refuses_bad_sizes_before_any_work(flag, message):
  result = run("scripts/peer_benchmark.py", "--quick", flag, "--torch_python=/no/such")
  assert result.returncode == 1
  assert message in result.stderr


def test_peer_benchmark_quick_prints_a_table_then_json_last():
  python = torch_python()
  result = run("scripts/peer_benchmark.py", "--quick", "--networks=resnet20", "--repeats=1",
               "--matmul_size=32", f"--torch_python={python}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| **ours / PyTorch, ratio of the medians** |" in result.stdout
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  row = summary["networks"]["resnet20"]
  assert row["batch_size"] == 8 and row["repeats"] == 1
  for key in ("ratio", "ours_images_per_s", "pytorch_images_per_s", "ours_of_matmul_peak",
              "pytorch_of_theoretical_peak"):
    assert benchmark.is_finite_positive(row[key]), (key, row[key])
  assert summary["torch"].startswith("2.") and "amx_bf16" in summary
  assert "(32^2, TensorFlow)" in result.stdout


EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse avx avx2 fma
cpu MHz\t\t: 2450.000
siblings\t: 4
cpu cores\t: 2
"""


def test_theoretical_peak_counts_physical_cores_and_the_widest_fma():
  cpu = peer_lib.read_cpu(EPYC, usable_cpus=4)  # Two cores, two hyperthreads each.
  assert (cpu.cores, cpu.flops_per_cycle, cpu.ghz) == (2, 32, 2.45)
  assert cpu.peak == 2 * 32 * 2.45e9
  assert "AVX2" in cpu.assumed and "cpu MHz" in cpu.assumed
  assert cpu.native_bf16() == {"amx_bf16": False, "avx512_bf16": False}
  xeon = EPYC.replace("AMD EPYC 7B13", "Intel(R) Xeon(R) Gold 6430 @ 2.10GHz").replace(
      "fma", "fma avx512f amx_bf16")
  cpu = peer_lib.read_cpu(xeon, usable_cpus=2)
  assert (cpu.cores, cpu.flops_per_cycle, cpu.ghz) == (1, 64, 2.1)
  assert cpu.native_bf16() == {"amx_bf16": True, "avx512_bf16": False}
  assert peer_lib.read_cpu(xeon, 2, flops_per_cycle=32).peak == 32 * 2.1e9
  assert peer_lib.read_cpu("", 2).peak == 0  # No /proc/cpuinfo: unknown, not a crash.


def test_peer_sizes_take_the_networks_defaults_then_quick_then_flags():
  assert peer_lib.Sizes.of("airbench") == peer_lib.Sizes("airbench", 1024, 3, 3, 32)
  assert peer_lib.Sizes.of("resnet20", quick=True, steps=5, batch_size=None) == (
      peer_lib.Sizes("resnet20", 8, 5, 3, 16))


def test_a_failing_pytorch_side_is_one_error_with_its_last_line(tmp_path):
  fake = tmp_path / "python"  # Says it has torch, then fails as a broken install would.
  fake.write_text('#!/bin/sh\n[ "$1" = -c ] && echo 2.13.0 && exit 0\n'
                  'echo "ImportError: libtorch_cpu.so: cannot open" >&2; exit 1\n')
  fake.chmod(0o755)
  assert peer_lib.torch_version(str(fake)) == ("2.13.0", None)
  with peer_lib.TorchPeer(str(fake), peer_lib.Sizes.of("resnet20", quick=True), 1) as peer:
    with pytest.raises(peer_lib.PeerError, match="stopped with exit code 1: ImportError"):
      peer.window()
