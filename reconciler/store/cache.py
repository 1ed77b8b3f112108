"""Rows decoded once: a full read keeps, until the next, each row's value by its whole content."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R", bound=Hashable)
V = TypeVar("V")


class RowCache(Generic[R, V]):
    """The values of the rows of the last read, keyed by the row itself (a record hashes and
    compares by its values, as a tuple does): an unchanged row costs a lookup, not a decode.

    It holds the rows of the last read only, so it never grows; and a read of unchanged rows
    leaves nothing new behind it (the garbage collector's work grows with what survives).
    `decode` is pure and never returns None; the rows of one read are distinct (they hold a key).
    """

    def __init__(self, decode: Callable[[R], V]) -> None:
        self._decode = decode
        self._values: dict[R, V] = {}

    def decoded(self, rows: Sequence[R]) -> list[V]:
        """`decode` of each row, in order."""
        values = self._values
        decoded: list[V] = []
        missed: list[tuple[R, V]] = []
        for row in rows:
            value = values.get(row)
            if value is None:
                value = self._decode(row)
                missed.append((row, value))
            decoded.append(value)
        if len(decoded) - len(missed) < len(values):
            present = set(rows)
            values = self._values = {r: v for r, v in values.items() if r in present}
        values.update(missed)
        return decoded
