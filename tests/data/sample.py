"""A small module to try completions on: `ghost-lsp complete tests/data/sample.py --line 17 --col 22`."""

import os
from pathlib import Path


def read_lines(path):
    """Return the lines of a text file without their line endings."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def find_python_files(root):
    """Yield every .py file under root."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            yield os.
    return


class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1
