"""A protocol that records what its connections went through, shared by the server tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest


class Recorder(asyncio.Protocol):
    made: list[Recorder] = []

    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []
        Recorder.made.append(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


@pytest.fixture(autouse=True)
def fresh_recorder() -> Iterator[None]:
    Recorder.made = []
    yield
    Recorder.made = []


async def passes(n: int = 20) -> None:
    """Let the loop run ``n`` passes (each one pass of its EThread: the cop when due)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until(predicate: Any, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")
