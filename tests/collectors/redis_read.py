"""Read back what collectors wrote: every sample in the shard streams, in stream order."""

from __future__ import annotations

import redis

from hub.codec import SampleCodec
from hub.keys import KeyLayout
from hub.sample import Sample


def read_samples(url: str, *, kind: str | None = None, node: str | None = None,
                 layout: KeyLayout | None = None) -> list[Sample]:
    """All samples in the hub's streams (optionally of one kind/node), each stream in order."""
    layout = layout or KeyLayout()
    codec = SampleCodec()
    client = redis.Redis.from_url(url)
    try:
        samples: list[Sample] = []
        for key in layout.stream_keys():
            for _, fields in client.xrange(key):
                sample = codec.decode(fields[b"d"])
                if (kind is None or sample.kind == kind) and (node is None or
                                                              sample.node == node):
                    samples.append(sample)
        return samples
    finally:
        client.close()


def seqs(samples: list[Sample]) -> list[int]:
    return [s.seq for s in samples]
