"""Arrivals for a decode loop on a script: each row starts waiting at its own step."""

from worker.decode_loop import DecodeRow
from worker.device_loop import Pending


class Scripted:
    """Rows that arrive while a decode loop runs (the test advances ``step``)."""

    def __init__(self, rows: list[tuple[int, DecodeRow]]) -> None:
        self.step = 0
        self.pending = [(step, Pending(row)) for step, row in rows]
        self.taken: list[Pending] = []

    def waiting(self) -> int:
        return sum(step <= self.step for step, _ in self.pending)

    def take(self, limit: int) -> list[Pending]:
        ready = [p for step, p in self.pending if step <= self.step][:limit]
        self.pending = [(step, p) for step, p in self.pending if p not in ready]
        self.taken += ready
        return ready
