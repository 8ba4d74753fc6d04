"""Micro-benchmark: encoding one update frame with stdlib json, orjson and msgpack.

Run: ``.venv/bin/python -m bench.json_encoders`` (not part of the test suite). Prints
microseconds per frame (best of several rounds) and each figure as a ratio to stdlib json,
for a typical 40-metric system sample with its resume cursor.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import msgpack

from gateway.cursor import encode_cursor
from gateway.protocol import (
    Encoding,
    UpdateMessage,
    encode_batch,
    std_json_dumps,
    update_message,
)
from hub.sample import Sample

ROUNDS = 7


def typical_sample() -> Sample:
    """A system sample shaped like the collector's: 40 gauges and counters."""
    rng = random.Random(4)
    names = [f"cpu{n}_percent" for n in range(8)] + [
        "load1", "load5", "load15", "mem_total_bytes", "mem_used_bytes", "mem_available_bytes",
        "swap_used_bytes", "procs_running", "procs_blocked", "ctx_switches_total",
        "interrupts_total", "uptime_seconds",
    ]
    names += [f"net_{d}_bytes_total.eth{n}" for n in range(2) for d in ("rx", "tx")]
    names += [f"disk_{d}_bytes_total.sda{n}" for n in range(2) for d in ("read", "write")]
    names += [f"fs_used_bytes./mnt/{n}" for n in range(6)]
    names += [f"fs_free_bytes./mnt/{n}" for n in range(40 - len(names))]
    values: dict[str, int | float] = {
        name: (rng.random() * 100 if "percent" in name or "load" in name
               else rng.randrange(10**12))
        for name in names[:40]
    }
    return Sample.build("web-12.example.org", "system", values, seq=123_456,
                        epoch=1_700_000_000_123, ts=1_700_000_000.123456)


def per_call_us(func: Callable[[], object], calls: int) -> float:
    """Best-of-ROUNDS microseconds per call."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(calls):
            func()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main() -> None:
    sample = typical_sample()
    positions = tuple((1_700_000_000_000 - 37 * k, k % 3) for k in range(16))
    cursor = encode_cursor(positions)
    message = update_message(sample, cursor)
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    calls = 20_000
    rows: list[tuple[str, float, int]] = []

    def run(name: str, func: Callable[[], bytes | str]) -> None:
        rows.append((name, per_call_us(func, calls), len(func())))

    run("stdlib json.dumps (default separators) -> str", lambda: json.dumps(message))
    run("stdlib JSONEncoder compact + .encode() -> bytes", lambda: std_json_dumps(message))
    try:
        import orjson
    except ImportError:
        print("orjson is not installed: pip install orjson to compare it")
    else:
        run("orjson.dumps -> bytes", lambda: orjson.dumps(message))
    run("msgpack Packer.pack (mh.v1.msgpack)", lambda: packer.pack(message))
    run("UpdateMessage.frame with its cursor (JSON, orjson)",
        lambda: UpdateMessage(0, (1, 0), sample, positions).frame(Encoding.JSON))
    run("encode_cursor (16 shards)", lambda: encode_cursor(positions))
    frames = [UpdateMessage(0, (1, 0), sample, positions).frame(Encoding.JSON)] * 20
    run("encode_batch of 20 encoded frames (splice)",
        lambda: encode_batch(frames, Encoding.JSON))

    baseline = rows[0][1]
    print(f"update frame of a 40-metric sample; best of {ROUNDS} x {calls} calls")
    print(f"{'encoder':56} {'us/frame':>9} {'vs json':>8} {'bytes':>6}")
    for name, micros, size in rows:
        print(f"{name:56} {micros:9.2f} {baseline / micros:7.1f}x {size:6d}")


if __name__ == "__main__":
    main()
