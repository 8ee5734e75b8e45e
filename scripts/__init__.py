"""Entry points; benchmark_lib is importable by them and by the tests."""
