import socket

import pytest

from minilib import DEFAULT_WORDS, Tally, clamp, fib, words
from minilib.core import address


def test_clamp():
    assert clamp(5, 0, 3) == 3
    assert clamp(-1, 0, 3) == 0
    assert clamp(2, 0, 3) == 2
    with pytest.raises(ValueError):
        clamp(1, 3, 0)


def test_words():
    assert words("A  b\tC") == ["a", "b", "c"]
    assert DEFAULT_WORDS == ["hello", "world"]


def test_fib():
    assert [fib(i) for i in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]


def test_tally():
    t = Tally()
    assert t.add() == 1 and t.add(4) == 5 and t.total == 5


def test_needs_the_network():
    # the sandbox refuses sockets: this test fails on the original code and is left out
    socket.create_connection(address("127.0.0.1", "9"), timeout=0.1)
