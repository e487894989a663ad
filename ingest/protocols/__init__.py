"""Vendor tracking protocols (Segment, PostHog) translated into our own event format.

Each protocol module is pure: a decoded body in, our events out (`Translated`), with every
refusal named in the SDK's own field names. The ingest service then runs them through the
same validation and durable append as `POST /v1/events` (ingest/service.py).
"""
