"""metrics-hub's benchmarks, run by ``python -m bench`` (``make bench``); docs/benchmarks.md.

Each module ``bench/<name>.py`` has ``main(...) -> dict[str, float]``: it prints its own
report and returns its figures. Names say the unit: ``*_us`` microseconds per operation,
``*_bytes`` sizes, ``*_per_s`` rates, ``*speedup`` and ``*_ratio`` ratios (``x``).
"""
