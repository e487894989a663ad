"""The contract between the stages: event and funnel models, ClickHouse migrations.

Imports nothing else of ours, so every stage can depend on it.
"""
