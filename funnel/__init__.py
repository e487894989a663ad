"""The funnel rule, in one place: what a funnel definition means for an event stream.

The flow, top to bottom:

* definition: `schemas.funnels` (the contract: the models the API takes and stores, and
  their validation rules);
* compiled: `funnel.compiled` turns a definition into what every consumer reads: the
  step and exclusion matchers (`funnel.match`, filters compiled once), the fold rule in
  milliseconds and step indexes, the held property and the session gap;
* fold: `funnel.fold`, the stage machine (entries, `FunnelProgress`, `Transition`), used
  live by the processor and to rebuild progress from stored events;
* sql: `funnel.sql`, the report queries ClickHouse evaluates by the same rule, built from
  the same compiled definition.

Imports `schemas` only; the processor and the query API import it.
"""
