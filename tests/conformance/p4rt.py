"""A synchronous P4Runtime session for the tests, on top of finsy's asyncio ``Switch``.

finsy is asyncio-only and the tests are plain functions, so the session runs an event loop in a thread of its
own and every call waits for its coroutine with a deadline. Opening a session arbitrates as primary and pushes
the pipeline (always, ``p4force``), which per the P4Runtime spec clears all forwarding state: every test starts
from an empty switch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, Self, TypeVar

import finsy as fy

_T = TypeVar("_T")

CALL_TIMEOUT_S = 30.0


class P4RuntimeSession:
    """Primary P4Runtime connection to one target, usable from synchronous code."""

    def __init__(self, address: str, p4info: Path, p4blob: Path, device_id: int) -> None:
        self._options = fy.SwitchOptions(p4info=p4info, p4blob=p4blob, p4force=True, device_id=device_id)
        self._address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="p4runtime-session", daemon=True)
        self._switch: fy.Switch | None = None

    def open(self) -> None:
        """Connect, become primary and push the pipeline."""
        self._thread.start()
        switch = fy.Switch("conformance", self._address, self._options)
        try:
            self._call(switch.__aenter__())
        except BaseException:
            self._stop_loop()
            raise
        self._switch = switch

    def close(self) -> None:
        switch, self._switch = self._switch, None
        try:
            if switch is not None:
                self._call(switch.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def switch(self) -> fy.Switch:
        if self._switch is None:
            raise RuntimeError("P4Runtime session is not open")
        return self._switch

    def insert(self, entities: Iterable[Any]) -> None:
        self._call(self.switch.insert(list(entities)))

    def modify(self, entities: Iterable[Any]) -> None:
        self._call(self.switch.modify(list(entities)))

    def delete(self, entities: Iterable[Any]) -> None:
        self._call(self.switch.delete(list(entities)))

    def delete_multicast_groups(self) -> None:
        """Delete every multicast group.

        BMv2 keeps its packet replication engine's groups across a pipeline push although its P4Runtime server
        forgets them (measured with simple_switch_grpc 1.15): a group written again after a push then
        replicates twice. So every session deletes its groups before it ends.
        """
        groups = self.read([fy.P4MulticastGroupEntry()])
        if groups:
            self.delete(groups)

    def read(self, entities: Iterable[Any]) -> list[Any]:
        """All entities a read of ``entities`` (wildcards allowed) returns, in one ReadRequest."""

        async def collect() -> list[Any]:
            return [entity async for entity in self.switch.read(list(entities))]

        return self._call(collect())

    def counters(self, cells: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """(packets, bytes) of the given (counter name, index) cells, read in one request."""
        cells = list(cells)
        replies = self.read(fy.P4CounterEntry(name, index=index) for name, index in cells)
        counts = {(entry.counter_id, entry.index): (entry.packet_count, entry.byte_count) for entry in replies}
        missing = [cell for cell in cells if cell not in counts]
        if missing:
            raise AssertionError(f"counter read did not return {missing}")
        return {cell: counts[cell] for cell in cells}

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=CALL_TIMEOUT_S)

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()
