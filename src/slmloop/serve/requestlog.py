"""The request log's writer: off the response path, bounded, and honest about what it drops.

Every answered request becomes a :class:`~slmloop.store.RequestLog` row (what ``slmloop monitor``
reads). A response never waits for the database: rows go into a bounded queue that one thread
writes in batches, one transaction each. When the database falls behind and the queue is full, a
row is dropped and counted (``/metrics``: ``slmloop_request_log_dropped``) instead of slowing the
answers down; at shutdown what is queued is written, for up to a few seconds.
"""

from __future__ import annotations

import contextlib
import queue
import threading

from slmloop.store import RequestLog, Store

__all__ = ["RequestLogWriter"]

#: rows written in one transaction at most
BATCH = 256


class RequestLogWriter:
    def __init__(self, store: Store, max_queued: int = 10_000) -> None:
        self.store = store
        self.dropped = 0
        self.failed = 0  # rows lost to a database error (the writer lives on)
        self._queue: queue.Queue[RequestLog | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._loop, name="slmloop-request-log", daemon=True)
        self._thread.start()

    def write(self, row: RequestLog) -> None:
        """Queue ``row``; dropped (and counted) when the writer is that far behind."""
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            rows = [first] if first is not None else []
            while first is not None and len(rows) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    first = None
                    break
                rows.append(nxt)
            if rows:
                try:
                    with self.store.session() as s:
                        s.add_all(rows)
                except Exception:  # logging must never take the server down
                    self.failed += len(rows)
            if first is None:
                return
