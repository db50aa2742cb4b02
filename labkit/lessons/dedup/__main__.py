"""`python -m labkit.lessons.dedup --bench`: the single-flight overhead per request (writes build/bench/dedup.json)."""

from labkit.lessons.dedup.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
