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
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from labkit.cache.base import Entry, decode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID
"""
_INDEX = "CREATE INDEX IF NOT EXISTS cache_entries_expiry ON cache_entries (expires_at)"
_EVICT = "DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_entries ORDER BY expires_at LIMIT ?)"


class SQLiteTier:
    """A cache tier in one SQLite file (`":memory:"` for a throwaway one), at most `max_rows` rows."""

    local = False

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "sqlite",
        max_rows: int | None = 100_000,
        purge_every: int = 1000,
        purge_interval_s: float = 60.0,
    ) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError("max_rows must be positive (or None for no bound)")
        if purge_every < 1:
            raise ValueError("purge_every must be at least 1")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_rows = max_rows
        self.purge_every = purge_every
        self.purge_interval_s = purge_interval_s
        self.purged = 0  # expired rows deleted, by `purge` or the schedule
        self.evicted = 0  # live rows deleted to keep within `max_rows`
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_INDEX)
        self._rows = 0  # the row count at the last upkeep
        self._writes = 0  # writes since the last upkeep (each adds at most one row)
        self._next_upkeep = 0.0
        self.upkeep()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM cache_entries").fetchone()[0])

    async def get(self, key: str) -> Entry | None:
        row = self._db.execute(
            "SELECT value FROM cache_entries WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        if row is None:
            return None
        return decode(row[0], expected_key=key)

    async def set(self, key: str, entry: Entry, ttl_s: float) -> None:
        await self.set_raw(key, entry.blob, ttl_s)

    async def set_raw(self, key: str, blob: bytes, ttl_s: float = 60.0) -> None:
        """Store bytes under a key (`set` uses it; tests and the lesson plant a corrupt entry with it)."""
        self._db.execute(
            "INSERT OR REPLACE INTO cache_entries (key, value, expires_at) VALUES (?, ?, ?)",
            (key, blob, time.time() + ttl_s),
        )
        self._writes += 1
        if self._upkeep_due():
            self.upkeep()

    def _upkeep_due(self) -> bool:
        if self._writes >= self.purge_every or time.monotonic() >= self._next_upkeep:
            return True
        return self.max_rows is not None and self._rows + self._writes > self.max_rows

    async def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM cache_entries WHERE key = ?", (key,))

    async def clear(self) -> None:
        self._db.execute("DELETE FROM cache_entries")
        self._rows = self._writes = 0

    def purge(self) -> int:
        """Delete expired rows; returns how many."""
        deleted = self._db.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (time.time(),)).rowcount
        self.purged += deleted
        return deleted

    def upkeep(self) -> None:
        """Purge expired rows, then evict the soonest-expiring past `max_rows` (the schedule calls it)."""
        self.purge()
        rows = len(self)
        if self.max_rows is not None and rows > self.max_rows:
            excess = rows - (self.max_rows - self.max_rows // 10)
            deleted = self._db.execute(_EVICT, (excess,)).rowcount
            self.evicted += deleted
            rows -= deleted
        self._rows, self._writes = rows, 0
        self._next_upkeep = time.monotonic() + self.purge_interval_s

    async def aclose(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"SQLiteTier({self.path!r})"


__all__ = ["SQLiteTier"]
