"""The request log's writer: off the response path, bounded, and honest about what it drops.

Every answered request becomes a :class:`~slmloop.store.RequestLog` row (what ``slmloop monitor``
reads). A response never waits for the database: rows go into a bounded queue that one thread
writes in batches, one transaction each. When the database falls behind and the queue is full, a
row is dropped and counted (``/metrics``: ``slmloop_request_log_dropped``) instead of slowing the
answers down; at shutdown what is queued is written, for up to a few seconds. With a retention
(``serve.log_retention_days``) the writer deletes older rows at start and then every hour.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
import time

from slmloop.store import RequestLog, Store, utcnow

__all__ = ["RequestLogWriter"]

#: rows written in one transaction at most
BATCH = 256
#: seconds between deletions of rows past the retention
PRUNE_EVERY = 3600.0


class RequestLogWriter:
    def __init__(self, store: Store, max_queued: int = 10_000, retention_days: float | None = None) -> None:
        self.store = store
        self.retention_days = retention_days
        self.pruned = 0  # rows deleted past the retention
        self._pruned_at = float("-inf")
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

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is stored (or failed); False if ``timeout`` seconds were not enough."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout=timeout)

    def prune(self) -> None:
        """Delete the rows past the retention (none without one); a database error waits for the next time."""
        self._pruned_at = time.monotonic()
        if self.retention_days is None:
            return
        with contextlib.suppress(Exception):
            self.pruned += self.store.prune_requests(utcnow() - dt.timedelta(days=self.retention_days))

    def _loop(self) -> None:
        while True:
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY:
                self.prune()
            try:
                first = self._queue.get(timeout=PRUNE_EVERY)
            except queue.Empty:
                continue
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
            for _ in range(len(rows) + (first is None)):  # every item taken, the end marker included
                self._queue.task_done()
            if first is None:
                return
