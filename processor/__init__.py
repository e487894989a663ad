"""The processor: log → sessions and funnel stages → ClickHouse. See `pipeline.py`."""
