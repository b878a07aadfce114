"""`ghost-lsp learn`: the current model fine-tuned on one project's code, measured on the
project's held-out files, installed per project where the server finds it (project.py: what may
be trained on; adapt.py: train, measure, export, install; command.py: the command line)."""
