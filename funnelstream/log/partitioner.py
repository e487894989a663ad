"""Key → partition for the embedded log.

Kafka's producer uses murmur2 on its own; here a stable CRC32 is enough: what matters is
that the mapping never changes for a topic, so one visitor's events stay in one partition.
"""

import zlib


def partition_for(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions
