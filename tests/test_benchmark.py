"""scripts/benchmark.py at tiny sizes: every headline figure exists, finite and
positive, and the table prints. No timing targets: this machine's speed is not tested."""

import json

from research import config as config_lib, data
from scripts import benchmark_lib as benchmark
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
  split, _ = data.synthetic(96, 32, 10, seed=0)
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
  recipe = config_lib.from_flagfile(benchmark.FAST_RECIPE_FLAGS)
  timed = benchmark.airbench_config(benchmark.Settings.quick(), "float32")
  for field in ("model", "augment", "loss", "optimizer", "momentum", "weight_decay",
                "param_rules", "lookahead_every", "tta"):
    assert getattr(timed, field) == getattr(recipe, field), field
  assert timed.batch_size == 8 and timed.precision == "float32"
