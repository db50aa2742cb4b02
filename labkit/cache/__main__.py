"""`python -m labkit.cache --bench`: cache hit latency per tier and semantic lookup time (build/bench/cache.json)."""

from labkit.cache.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
