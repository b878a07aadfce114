"""`ghost-lsp bench` and the other speed and quality benchmarks, each a module."""
