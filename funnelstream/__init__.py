"""Funnelstream: cross-cutting pieces shared by every stage (log, ClickHouse, settings, CLI)."""

__version__ = "0.1.0"
