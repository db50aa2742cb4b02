"""`python -m labkit.dedup --bench`: the single-flight overhead per request (writes build/bench/dedup.json)."""

from labkit.dedup.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
