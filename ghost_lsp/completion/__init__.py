"""One completion request: completer (the stages), prompt, filters, rank, forward cache, debounce."""
