"""The log between ingest and the processor: one interface, two implementations.

`embedded` (SQLite, one machine) and `kafka` (aiokafka, production) both pass
`tests/funnelstream/log/test_contract.py`.
"""

from funnelstream.log.base import (
    Log,
    LogConsumer,
    LogMessage,
    LogProducer,
    LogRecord,
    LogUnavailable,
    RebalanceListener,
)

__all__ = [
    "Log",
    "LogConsumer",
    "LogMessage",
    "LogProducer",
    "LogRecord",
    "LogUnavailable",
    "RebalanceListener",
]
