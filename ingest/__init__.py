"""Ingest: HTTP events in, durable log records out. See `pipeline.py`."""
