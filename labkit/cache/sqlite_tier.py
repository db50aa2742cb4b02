"""L3: SQLite on disk, so cached answers survive a restart of the process (and of Redis).

The standard library's synchronous `sqlite3`, called directly from the event loop: a primary-key read costs
about 10 µs here, far less than a thread hop, whereas `aiosqlite` (a thread per connection and a queue) costs
about 0.5 ms per call. WAL journal with `synchronous=NORMAL`: a write does not wait for an fsync, and a crash
loses at most the last writes, which is harmless for a cache.

Bounded: expired rows are skipped on read and deleted by `purge()`, which the tier runs itself on a schedule
(when it opens the file, then after every `purge_every` writes or `purge_interval_s` seconds, whichever comes
first), so a long-running process does not fill the disk with dead answers. Past `max_rows`, the rows that
expire soonest are deleted down to 90% of the bound (with one TTL for every entry, the oldest): the margin
means the row count is taken once per tenth of the bound in writes, not on every write. An index on
`expires_at` makes both deletions a range scan, never a scan of the stored answers.

Written behind, when asked (`write_behind_s`, which `build_chain` sets): a write then goes into a small buffer in
memory, and the buffer goes to the file in one transaction after `write_behind_s` seconds or at `batch_rows` rows,
whichever comes first (and on `flush()`, `aclose()`, `len()` and `purge()`). An autocommitted INSERT pays a WAL
commit of its own, a row of a batch a share of one: written through, the L3 write was the largest single client CPU
cost of a cache miss through the default chain (`python -m labkit.lessons.overhead`). The trade: a crash loses the
answers of the last `write_behind_s` seconds (harmless for a cache: they are asked again), and another process
sharing the file sees an answer that much later. Reads in this process see the buffer at once. The flush runs in the
event loop (a thread would still spend the CPU and add a hop); a flush that fails is logged and counted
(`write_errors`), and its rows are dropped, as a failed write-through would be. Without `write_behind_s` every write
is its own transaction, so a second process sees it at once.

Private, when asked (`private=True`, which `build_chain` sets for the temporary file it makes itself): no other
process writes to the file, so the tier remembers which keys it holds (a set of their hashes, rebuilt from the file
when it has grown to twice the rows) and answers a miss for any other key without a read (the read was the L3's
other cost on a miss). A hash shared by two keys only costs a read; a key it forgot (after a `delete` of its twin)
is a miss.

Spilled, when asked (`spill=True`, which `build_chain` sets for its temporary file, private as well): the tier holds
only what the memory tier above it evicts, not a copy of every answer. A temporary file is cleared when its chain
closes, so it never served a restart: what it adds is room beyond the memory tier's bounds, and for that the
evicted answers are enough. A miss then writes nothing to SQLite while the memory tier has room (the write, even
behind, was half the cache layer's client CPU on a miss: `python -m labkit.lessons.overhead --layers`). The cache
layer does the wiring (`CacheLayer` hands the memory tier's evictions to `put_now`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from labkit.cache.base import Entry, decode

# A rowid table: rows are appended in write order and the keys live in the primary key's own index. Keyed by the
# key itself (WITHOUT ROWID), each write of a random SHA-256 key landed a ~1 kB row on a random page of the table, so
# a batch dirtied (and wrote to the WAL) a page per row, and batching hardly helped. A file made WITHOUT ROWID by an
# earlier version is used as it is (the statements are the same).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS cache_entries_expiry ON cache_entries (expires_at)"
_EVICT = "DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_entries ORDER BY expires_at LIMIT ?)"
_WRITE = "INSERT OR REPLACE INTO cache_entries (key, value, expires_at) VALUES (?, ?, ?)"
_READ = "SELECT value FROM cache_entries WHERE key = ? AND expires_at > ?"

log = logging.getLogger("labkit.cache")


class SQLiteTier:
    """A cache tier in one SQLite file (`":memory:"` for a throwaway one), at most `max_rows` rows."""

    local = False
    #: Its calls never wait on the event loop (sqlite3 is synchronous): a timeout around them could never fire,
    #: so the cache layer calls it without one (a failure still marks the tier down).
    blocking = True

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "sqlite",
        max_rows: int | None = 100_000,
        purge_every: int = 1000,
        purge_interval_s: float = 60.0,
        write_behind_s: float | None = None,
        batch_rows: int = 256,
        private: bool = False,
        spill: bool = False,
    ) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError("max_rows must be positive (or None for no bound)")
        if purge_every < 1:
            raise ValueError("purge_every must be at least 1")
        if write_behind_s is not None and not write_behind_s > 0:
            raise ValueError(f"write_behind_s must be > 0 seconds or None (write through), got {write_behind_s!r}")
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_rows = max_rows
        self.purge_every = purge_every
        self.purge_interval_s = purge_interval_s
        self.purged = 0  # expired rows deleted, by `purge` or the schedule
        self.evicted = 0  # live rows deleted to keep within `max_rows`
        self.write_behind_s = write_behind_s
        self.batch_rows = batch_rows
        self.spill = spill  # written with what the memory tier above evicts, not on every store (CacheLayer)
        self.flushes = 0  # transactions that wrote buffered rows
        self.write_errors = 0  # flushes that failed (their rows were dropped)
        # key -> (entry or blob, expires_at), not yet in the file: an entry is encoded when it is written, in a batch
        self._pending: dict[str, tuple[Entry | bytes, float]] = {}
        self._known: set[int] | None = set() if private else None  # hashes of the keys in the file (private only)
        self._timer: asyncio.TimerHandle | None = None
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_INDEX)
        self._rows = 0  # the row count at the last upkeep
        self._writes = 0  # writes since the last upkeep (each adds at most one row)
        self._next_upkeep = 0.0
        self.upkeep()
        self._remember()

    @property
    def private(self) -> bool:
        return self._known is not None

    def _remember(self) -> None:
        """Rebuild the set of key hashes from the file (a private tier, on opening and when the set has grown)."""
        if self._known is not None:
            self.flush()
            self._known = {hash(key) for (key,) in self._db.execute("SELECT key FROM cache_entries")}

    def __len__(self) -> int:
        self.flush()
        return int(self._db.execute("SELECT count(*) FROM cache_entries").fetchone()[0])

    @property
    def pending(self) -> int:
        """Rows written but not yet in the file (always 0 without `write_behind_s`)."""
        return len(self._pending)

    def may_hold(self, key: str) -> bool:
        """False when the tier knows without a read that it does not hold `key` (a private file it never wrote it to);
        the cache layer asks before it calls `get`."""
        return self._known is None or hash(key) in self._known

    async def get(self, key: str) -> Entry | None:
        if not self.may_hold(key):
            return None  # never written here, and nobody else writes to a private file
        if self._pending:
            buffered = self._pending.get(key)
            if buffered is not None:
                held, expires_at = buffered
                if expires_at <= time.time():
                    return None
                return held if isinstance(held, Entry) else decode(held, expected_key=key)
        row = self._db.execute(_READ, (key, time.time())).fetchone()
        if row is None:
            return None
        return decode(row[0], expected_key=key)

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None:
        await self.set_raw(key, entry if self.write_behind_s is not None else entry.blob, ttl_s)

    async def set_raw(self, key: str, blob: bytes | Entry, ttl_s: float = 60.0) -> None:
        """Store bytes under a key (`set` uses it; tests and the lesson plant a corrupt entry with it).

        Written behind, `set` hands over the entry itself: it is encoded when its batch is written (pydantic's
        serializer costs less in a loop over a batch than once per request between other work)."""
        self.put_now(key, blob, ttl_s)

    def put_now(self, key: str, blob: bytes | Entry, ttl_s: float) -> None:
        """`set_raw` without an await (nothing in it waits): what a memory tier's eviction callback can call."""
        expires_at = time.time() + ttl_s
        if self._known is not None:
            self._known.add(hash(key))
        if self.write_behind_s is None:
            self._db.execute(_WRITE, (key, blob.blob if isinstance(blob, Entry) else blob, expires_at))
            self._writes += 1
            if self._upkeep_due():
                self.upkeep()
            return
        self._pending[key] = (blob, expires_at)
        if len(self._pending) >= self.batch_rows:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.write_behind_s, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        try:
            self.flush()
        except Exception as error:  # a timer has no caller to tell: log it, count it, keep serving
            log.warning("cache tier %s: a buffered write of rows failed and was dropped (%s)", self.name, error)

    def flush(self) -> None:
        """Write the buffered rows in one transaction (a no-op without `write_behind_s` or with nothing buffered).

        A failure drops the rows (they are a cache's, asked again on a miss), counts it and raises."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending = list(self._pending.items())
        self._pending.clear()
        try:
            rows = [
                (key, held.blob if isinstance(held, Entry) else held, expires_at) for key, (held, expires_at) in pending
            ]
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_WRITE, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except Exception:
            self.write_errors += 1
            raise
        self.flushes += 1
        self._writes += len(rows)
        if self._upkeep_due():
            self.upkeep()

    def _upkeep_due(self) -> bool:
        if self._writes >= self.purge_every or time.monotonic() >= self._next_upkeep:
            return True
        return self.max_rows is not None and self._rows + self._writes > self.max_rows

    async def delete(self, key: str) -> None:
        if self._known is not None:
            self._known.discard(hash(key))
        self._pending.pop(key, None)
        self._db.execute("DELETE FROM cache_entries WHERE key = ?", (key,))

    async def clear(self) -> None:
        if self._known is not None:
            self._known.clear()
        self._pending.clear()
        self._db.execute("DELETE FROM cache_entries")
        self._rows = self._writes = 0

    def purge(self) -> int:
        """Delete expired rows; returns how many."""
        self.flush()
        deleted = self._db.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (time.time(),)).rowcount
        self.purged += deleted
        return deleted

    def upkeep(self) -> None:
        """Purge expired rows, then evict the soonest-expiring past `max_rows` (the schedule calls it)."""
        self.purge()
        rows = int(self._db.execute("SELECT count(*) FROM cache_entries").fetchone()[0])
        if self.max_rows is not None and rows > self.max_rows:
            excess = rows - (self.max_rows - self.max_rows // 10)
            deleted = self._db.execute(_EVICT, (excess,)).rowcount
            self.evicted += deleted
            rows -= deleted
        self._rows, self._writes = rows, 0
        self._next_upkeep = time.monotonic() + self.purge_interval_s
        if self._known is not None and len(self._known) > 2 * max(rows, 1000):  # purged and evicted keys piled up
            self._known = {hash(key) for (key,) in self._db.execute("SELECT key FROM cache_entries")}

    async def aclose(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteTier({self.path!r})"


__all__ = ["SQLiteTier"]
