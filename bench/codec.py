"""The codec benchmark: encode+decode of a typical 40-field system sample against stdlib json.

The headline figure, ``speedup``, is how many times faster SampleCodec's encode+decode is
than ``json.dumps`` + ``json.loads`` of the equivalent dict, in the same process: all cases
run in interleaved rounds and each figure is the median over rounds, so a noisy neighbour
slows both sides of a round alike. The JSON side does no validation at all; the codec
validates everything, both ways.
"""

from __future__ import annotations

import json
import math
import operator
import random
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import msgpack

from hub.codec import SampleCodec
from hub.errors import CodecError
from hub.names import METRIC_RE
from hub.sample import Sample

GOAL_SPEEDUP = 3.0

# A system sample as collectors/system.py emits it (names from collectors/metric_table.py):
# computed ratios and rates are full-precision floats, load averages short ones, counters
# and sizes ints.
SYSTEM_METRICS: tuple[str, ...] = (
    "cpu_utilization_ratio", "cpu_user_ratio", "cpu_system_ratio", "cpu_iowait_ratio",
    "cpu_steal_ratio", "load1", "load5", "load15",
    "memory_total_bytes", "memory_available_bytes", "memory_used_bytes",
    "memory_cached_bytes", "memory_buffers_bytes", "memory_used_ratio",
    "swap_total_bytes", "swap_used_bytes", "swap_used_ratio",
    "disk_read_bytes_total.sda", "disk_written_bytes_total.sda", "disk_reads_total.sda",
    "disk_writes_total.sda", "disk_read_bytes_per_second.sda",
    "disk_written_bytes_per_second.sda", "disk_busy_ratio.sda",
    "net_rx_bytes_total.eth0", "net_tx_bytes_total.eth0", "net_rx_packets_total.eth0",
    "net_tx_packets_total.eth0", "net_rx_errors_total.eth0", "net_tx_errors_total.eth0",
    "net_rx_bytes_per_second.eth0", "net_tx_bytes_per_second.eth0",
    "context_switches_total", "context_switches_per_second", "interrupts_total",
    "interrupts_per_second", "fs_used_bytes./", "fs_available_bytes./", "fs_used_ratio./",
    "process_count",
)


def typical_system_sample(*, short_floats: bool = False, seed: int = 2024) -> Sample:
    """A realistic 40-field system sample (the same one for a given seed).

    ``short_floats`` rounds every float to 3 decimals: the case least favourable to the
    codec, as JSON's cost is mostly in writing and parsing long floats.
    """
    rng = random.Random(seed)
    values: dict[str, int | float] = {}
    for name in SYSTEM_METRICS:
        value: int | float
        if name.startswith("load"):
            value = round(rng.uniform(0.0, 8.0), 2)  # /proc/loadavg has 2 decimals
        elif name.endswith("_ratio") or "_ratio." in name:
            value = rng.random()
        elif "_per_second" in name:
            value = rng.uniform(0.0, 1e8)
        elif "errors" in name:
            value = rng.choice((0, 0, 0, 3))
        elif name == "process_count":
            value = rng.randrange(50, 2000)
        else:
            value = rng.randrange(10**6, 10**13)
        values[name] = round(value, 3) if short_floats and type(value) is float else value
    return Sample.build("web-12.example.org", "system", values, seq=123_456,
                        epoch=1_732_900_000_123, ts=1_732_900_000.123456)


def json_document(sample: Sample) -> dict[str, Any]:
    """The dict a JSON pipeline would carry for ``sample``."""
    document: dict[str, Any] = {
        "node": sample.node, "kind": sample.kind, "ts": sample.ts, "seq": sample.seq,
        "epoch": sample.epoch, "values": dict(sample.values),
    }
    if sample.labels:
        document["labels"] = dict(sample.labels)
    return document


class MapLayoutCodec:
    """For comparison only: the values as a msgpack map, validated to the same standard.

    The layout SampleCodec does not use (docs/model.md): msgpack must build and intern 40 key
    strings per sample, where the joined-names layout builds one string and reuses a split.
    """

    def __init__(self) -> None:
        self._pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
        self._names: set[str] = set()  # metric names validated so far
        self._topics: set[tuple[str, str]] = set()

    def encode(self, sample: Sample) -> bytes:
        node, kind, ts, seq, epoch, values, labels = sample
        if not self._names.issuperset(values):
            self._check_names(values)
        if (node, kind) not in self._topics:
            self._topics.add((node, kind))  # validated by Sample.build in this benchmark
        if not math.isfinite(sum(values.values(), 0.0)):
            raise CodecError("non-finite value")
        data: bytes = self._pack([1, node, kind, ts, seq, epoch, values, labels or {}])
        return data

    def decode(self, data: bytes) -> Sample:
        obj = msgpack.unpackb(data, max_bin_len=0, max_ext_len=0)
        if type(obj) is not list or len(obj) != 8:
            raise CodecError("not a sample")
        version, node, kind, ts, seq, epoch, values, labels = obj
        if (version != 1 or type(ts) is not float or not 0.0 <= ts < math.inf
                or type(seq) is not int or not 0 <= seq < 2**63
                or type(epoch) is not int or not 0 <= epoch < 2**53
                or (node, kind) not in self._topics or type(values) is not dict):
            raise CodecError("bad header")
        if not self._names.issuperset(values):
            self._check_names(values)
        numbers = list(values.values())
        if not math.isfinite(sum(numbers, 0.0)):
            raise CodecError("non-finite value")
        if bool in set(map(type, numbers)):
            values = {name: operator.pos(value) for name, value in values.items()}
        return Sample(node, kind, ts, seq, epoch, values, labels)

    def _check_names(self, names: Any) -> None:
        for name in names:
            if type(name) is not str or METRIC_RE.fullmatch(name) is None:
                raise CodecError(f"invalid metric name {name!r}")
            self._names.add(name)


def measure(*, rounds: int, number: int) -> dict[str, float]:
    """Time every case ``number`` times per round for ``rounds`` rounds; medians in µs."""
    sample = typical_system_sample()
    short = typical_system_sample(short_floats=True)
    short_document = json_document(short)
    codec = SampleCodec()
    encode, decode = codec.encode, codec.decode
    data = encode(sample)
    if decode(data) != sample:
        raise AssertionError("the codec does not round-trip the benchmark sample")
    document = json_document(sample)
    text = json.dumps(document)
    dumps, loads = json.dumps, json.loads
    map_codec = MapLayoutCodec()
    map_data = map_codec.encode(sample)
    if map_codec.decode(map_data) != sample:
        raise AssertionError("the map-layout codec does not round-trip the benchmark sample")
    cases: dict[str, Callable[[], object]] = {
        "encode": lambda: encode(sample),
        "decode": lambda: decode(data),
        "codec": lambda: decode(encode(sample)),
        "json_dumps": lambda: dumps(document),
        "json_loads": lambda: loads(text),
        "json": lambda: loads(dumps(document)),
        "map_layout": lambda: map_codec.decode(map_codec.encode(sample)),
        "short_codec": lambda: decode(encode(short)),
        "short_json": lambda: loads(dumps(short_document)),
    }
    timers = {name: timeit.Timer(case) for name, case in cases.items()}
    for timer in timers.values():  # warm caches and the specialising interpreter
        timer.timeit(max(1, number // 10))
    per_round: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, timer in timers.items():
            per_round[name].append(timer.timeit(number) / number * 1e6)
    median = {name: statistics.median(times) for name, times in per_round.items()}

    def ratio(slow: str, fast: str) -> float:
        # the median of per-round ratios: both sides of a round met the same machine load
        return statistics.median(s / f for s, f in zip(per_round[slow], per_round[fast],
                                                       strict=True))

    return {
        "encode_us": median["encode"],
        "decode_us": median["decode"],
        "codec_us": median["codec"],
        "json_dumps_us": median["json_dumps"],
        "json_loads_us": median["json_loads"],
        "json_us": median["json"],
        "encode_speedup": ratio("json_dumps", "encode"),
        "decode_speedup": ratio("json_loads", "decode"),
        "speedup": ratio("json", "codec"),
        "goal_speedup": GOAL_SPEEDUP,
        "short_floats_codec_us": median["short_codec"],
        "short_floats_json_us": median["short_json"],
        "short_floats_speedup": ratio("short_json", "short_codec"),
        "map_layout_us": median["map_layout"],
        "map_layout_speedup": ratio("json", "map_layout"),
        "codec_bytes": float(len(data)),
        "json_bytes": float(len(text.encode())),
        "size_ratio": len(data) / len(text.encode()),
        "rounds": float(rounds),
        "number": float(number),
    }


def report(figures: dict[str, float]) -> str:
    """The figures as a small table."""
    met = "met" if figures["speedup"] >= figures["goal_speedup"] else "NOT met"
    rows = [
        f"codec: encode+decode of a {len(SYSTEM_METRICS)}-field system sample vs json.dumps"
        f"+json.loads of the same dict (median of {figures['rounds']:.0f} rounds"
        f" x {figures['number']:.0f})",
        f"  {'':<16}{'codec':>10}{'json':>11}{'speedup':>10}",
        f"  {'encode':<16}{figures['encode_us']:>7.2f} µs{figures['json_dumps_us']:>8.2f} µs"
        f"{figures['encode_speedup']:>9.2f}x",
        f"  {'decode':<16}{figures['decode_us']:>7.2f} µs{figures['json_loads_us']:>8.2f} µs"
        f"{figures['decode_speedup']:>9.2f}x",
        f"  {'encode+decode':<16}{figures['codec_us']:>7.2f} µs{figures['json_us']:>8.2f} µs"
        f"{figures['speedup']:>9.2f}x   goal >= {figures['goal_speedup']:.1f}x: {met}",
        f"  {'size':<16}{figures['codec_bytes']:>7.0f} B {figures['json_bytes']:>8.0f} B "
        f"{figures['size_ratio']:>8.2f} of json",
        f"  {'floats rounded':<16}{figures['short_floats_codec_us']:>7.2f} µs"
        f"{figures['short_floats_json_us']:>8.2f} µs{figures['short_floats_speedup']:>9.2f}x"
        "   (to 3 decimals: json's best case)",
        f"  {'map layout':<16}{figures['map_layout_us']:>7.2f} µs{'':>11}"
        f"{figures['map_layout_speedup']:>9.2f}x   (values as a msgpack map: not used)",
    ]
    return "\n".join(rows)


def main(*, quick: bool = False) -> dict[str, float]:
    """Run the codec benchmark, print its table, and return its figures."""
    figures = measure(rounds=5, number=1_000) if quick else measure(rounds=15, number=5_000)
    print(report(figures))
    return figures


if __name__ == "__main__":
    main()
