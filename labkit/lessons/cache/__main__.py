"""`python -m labkit.lessons.cache --bench`: cache hit latency per tier and semantic lookup time.

Writes build/bench/cache.json.
"""

from labkit.lessons.cache.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
