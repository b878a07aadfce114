from minilib.core import Tally, clamp, fib, words

DEFAULT_WORDS = words("Hello World")  # called at import: every test depends on it

__all__ = ["Tally", "clamp", "fib", "words", "DEFAULT_WORDS"]
