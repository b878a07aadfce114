"""Offline tools: evaluations, model building, benchmarks, fine-tuning. Nothing outside tools/ imports them
(tests/test_architecture.py checks it); the command line reaches them by name (cli/tools.py)."""
