"""Small functions with tests in tests/check_core.py."""


def clamp(x, lo, hi):
    """Clamp `x` into [lo, hi]."""
    if lo > hi:
        raise ValueError("lo > hi")
    return max(lo, min(x, hi))


def words(text):
    """The lower-cased words of `text`."""
    return [w.lower() for w in text.split()]


def fib(n):
    """The n-th Fibonacci number (fib(0) == 0)."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Tally:
    def __init__(self):
        self.total = 0

    def add(self, k=1):
        """Add `k`; return the new total."""
        self.total += k
        return self.total


def address(host, port):
    """Only the test that fails in the sandbox calls this: it is never a hole."""
    return (host, int(port))


def unused(x):
    """No test calls this: it is never a hole."""
    return x * 2
