"""Every metric name in one registry (Prometheus). Measured where the thing happens."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes and the rest, per process (`serve` runs two: the public
# /metrics labels each sample with its `process`, funnelstream/front.py).
ProcessCollector(registry=REGISTRY)

# supervision (funnelstream/supervise.py)
COMPONENT_UP = Gauge(
    "funnelstream_component_up",
    "1 when the component (a background task, or ClickHouse or the log as seen from here)"
    " is ready, 0 when it has failed",
    ["component"],
    registry=REGISTRY,
)
COMPONENT_RESTARTS = Counter(
    "funnelstream_component_restarts_total",
    "Background tasks restarted by the supervisor after a crash",
    ["component"],
    registry=REGISTRY,
)

# every HTTP route (funnelstream/http_metrics.py)
HTTP_RESPONSES = Counter(
    "funnelstream_http_responses_total",
    "Responses by route kind (ingest, query, ops) and status class (2xx, 4xx, 5xx)",
    ["route_kind", "code"],
    registry=REGISTRY,
)

# ingest
INGEST_EVENTS = Counter(
    "funnelstream_ingest_events_total",
    "Events accepted and durably appended",
    ["project"],
    registry=REGISTRY,
)
INGEST_REJECTED = Counter(
    "funnelstream_ingest_rejected_total",
    "Events or requests refused, by reason",
    ["reason"],
    registry=REGISTRY,
)
INGEST_DROPPED = Counter(
    "funnelstream_ingest_dropped_total",
    "Events answered 2xx but deliberately not stored (bots), by reason",
    ["reason"],
    registry=REGISTRY,
)
# vendor SDK protocols (ingest/sdk.py): also counted in the two counters above
INGEST_PROTOCOL_EVENTS = Counter(
    "funnelstream_ingest_protocol_events_total",
    "Events accepted and durably appended through a vendor SDK protocol (segment, posthog)",
    ["protocol"],
    registry=REGISTRY,
)
INGEST_PROTOCOL_REJECTED = Counter(
    "funnelstream_ingest_protocol_rejected_total",
    "Vendor SDK messages or requests refused, by protocol and reason; `unsupported_merge`:"
    " identity merges accepted and kept as dead letters",
    ["protocol", "reason"],
    registry=REGISTRY,
)
INGEST_APPEND_SECONDS = Histogram(
    "funnelstream_ingest_append_seconds",
    "Time to durably append one request's events",
    registry=REGISTRY,
)
INGEST_UNAVAILABLE = Counter(
    "funnelstream_ingest_unavailable_total",
    "Requests answered 503 because the log was down",
    registry=REGISTRY,
)

# processor
PROCESSOR_MESSAGES = Counter(
    "funnelstream_processor_messages_total", "Log messages consumed", registry=REGISTRY
)
PROCESSOR_DUPLICATES = Counter(
    "funnelstream_processor_duplicate_events_total",
    "Events dropped as event_id repeats",
    registry=REGISTRY,
)
PROCESSOR_TOO_LATE = Counter(
    "funnelstream_processor_too_late_events_total",
    "Events older than the allowed lateness behind their visitor's newest: stored, and "
    "their visitor re-folded from the stored events",
    registry=REGISTRY,
)
PROCESSOR_REFOLDED_VISITORS = Counter(
    "funnelstream_processor_refolded_visitors_total",
    "Visitors re-folded from their stored events after a late event",
    registry=REGISTRY,
)
PROCESSOR_REFOLD_SECONDS = Histogram(
    "funnelstream_processor_refold_seconds",
    "Time to re-fold one batch's late visitors (reads, fold, correction writes)",
    registry=REGISTRY,
)
PROCESSOR_CORRECTIONS = Counter(
    "funnelstream_processor_transition_corrections_total",
    "Transition rows written by re-folds: retracted (no longer made) or corrected (made "
    "instead); counted apart from transitions as they happened",
    ["kind"],
    registry=REGISTRY,
)
PROCESSOR_DEAD_LETTERS = Counter(
    "funnelstream_processor_dead_letters_total",
    "Messages dead-lettered, by reason",
    ["reason"],
    registry=REGISTRY,
)
PROCESSOR_BATCH_MESSAGES = Histogram(
    "funnelstream_processor_batch_messages",
    "Messages per written batch",
    buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
    registry=REGISTRY,
)
PROCESSOR_WRITE_SECONDS = Histogram(
    "funnelstream_processor_write_seconds",
    "Time to write one batch to ClickHouse",
    registry=REGISTRY,
)
PROCESSOR_USERS_REBUILT = Counter(
    "funnelstream_processor_users_rebuilt_total",
    "Users whose count_by=user funnel state was rebuilt from stored events",
    registry=REGISTRY,
)
PROCESSOR_USER_REBUILD_SECONDS = Histogram(
    "funnelstream_processor_user_rebuild_seconds",
    "Time to rebuild the users one batch touched in one project (reads and fold)",
    registry=REGISTRY,
)
PROCESSOR_WRITE_RETRIES = Counter(
    "funnelstream_processor_write_retries_total", "ClickHouse writes retried", registry=REGISTRY
)
PROCESSOR_LOG_ERRORS = Counter(
    "funnelstream_processor_log_errors_total",
    'Log calls that failed and were retried or given up (poll, commit), by call; "fenced":'
    " batches dropped unwritten because the group had moved on without this member",
    ["call"],
    registry=REGISTRY,
)
PROCESSOR_FRESHNESS_SECONDS = Histogram(
    "funnelstream_processor_freshness_seconds",
    "From ingest receiving an event to its batch being committed",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
PROCESSOR_LAG = Gauge(
    "funnelstream_processor_lag_messages",
    "Messages not yet committed, per partition",
    ["partition"],
    registry=REGISTRY,
)
PROCESSOR_COMMITTED_OFFSET = Gauge(
    "funnelstream_processor_committed_offset",
    "Last committed offset, per partition",
    ["partition"],
    registry=REGISTRY,
)
PROCESSOR_VISITORS = Gauge(
    "funnelstream_processor_visitors_in_memory", "Visitor states held", registry=REGISTRY
)

BACKFILL_PROGRESS = Gauge(
    "funnelstream_backfill_progress",
    "Share (0..1) of a funnel's backfill done by this processor in this run, per funnel: "
    "visitors rebuilt over visitors to rebuild; 1 when complete",
    ["project", "funnel"],
    registry=REGISTRY,
)

# funnels, as the processor holds them (processor/funnel_metrics.py; docs/metrics.md):
# saved funnels only, at most `metrics_funnels_per_project` per project, steps 1..n.
FUNNEL_VISITORS_AT_STAGE = Gauge(
    "funnelstream_funnel_visitors_at_stage",
    "Visitors held by this processor whose deepest step is this one now (the live API's "
    "at_stage), recomputed from the held states at every scrape",
    ["project", "funnel", "step"],
    registry=REGISTRY,
)
FUNNEL_TRANSITIONS = Counter(
    "funnelstream_funnel_transitions_total",
    "Visitors reaching this step, as the events arrived (written rows of kind reached); "
    "from_step names the step before (none for the first), so PromQL can divide a step by "
    "the one before it (label_replace) without another series",
    ["project", "funnel", "step", "from_step"],
    registry=REGISTRY,
)
FUNNEL_CORRECTIONS = Counter(
    "funnelstream_funnel_transition_corrections_total",
    "Transitions a late event changed, apart from the transitions counter (which never "
    "goes down): retracted (never happened in timestamp order) or corrected (made instead)",
    ["project", "funnel", "step", "kind"],
    registry=REGISTRY,
)
FUNNEL_SECONDS_TO_CONVERT = Histogram(
    "funnelstream_funnel_seconds_to_convert",
    "From the start of a visitor's attempt (its first step) to reaching this step (2..n)",
    ["project", "funnel", "step"],
    buckets=(10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400),
    registry=REGISTRY,
)
FUNNEL_METRICS_OMITTED = Gauge(
    "funnelstream_funnel_metrics_omitted",
    "Saved funnels of a project left out of the funnel metrics by the per-project cap",
    ["project"],
    registry=REGISTRY,
)

# funnel catalog
FUNNELS_QUARANTINED = Gauge(
    "funnelstream_funnels_quarantined",
    "Funnel definitions left out (1 each), by code: stored ones that no longer load, or "
    "runtime_error for one that failed while the processor ran it",
    ["project", "funnel", "code"],
    registry=REGISTRY,
)

# query api
QUERY_SECONDS = Histogram(
    "funnelstream_query_seconds",
    "Time to answer a query API request",
    ["route"],
    registry=REGISTRY,
)
QUERY_ERRORS = Counter(
    "funnelstream_query_errors_total",
    "Query API requests ClickHouse failed: unavailable (503, ask again) or query_failed "
    "(500, a bug in our SQL)",
    ["kind"],
    registry=REGISTRY,
)

# API keys (funnelstream/key_store.py)
KEY_REFRESH_FAILURES = Counter(
    "funnelstream_key_refresh_failures_total",
    "Reloads of the stored API keys that failed (the last loaded keys stay in use)",
    registry=REGISTRY,
)
KEYS_LOADED_AT = Gauge(
    "funnelstream_keys_loaded_timestamp_seconds",
    "When this process last loaded the stored API keys (seconds since the epoch); a "
    "revocation made after it is not seen here yet",
    registry=REGISTRY,
)
KEYS_ACTIVE = Gauge(
    "funnelstream_keys_active",
    "Active API keys this process accepts, by scope (config file and stored)",
    ["scope"],
    registry=REGISTRY,
)
AUTH_REFUSED = Counter(
    "funnelstream_auth_refused_total",
    "Requests refused for their key: missing, unknown, or of another scope",
    ["reason"],
    registry=REGISTRY,
)
# request limits (funnelstream/request_limits.py, funnelstream/ratelimit.py)
RATE_LIMITED = Counter(
    "funnelstream_rate_limited_total",
    "Requests refused with 429, by route kind (ingest, query) and the limit's setting",
    ["route_kind", "limit"],
    registry=REGISTRY,
)
BODY_TOO_LARGE = Counter(
    "funnelstream_body_too_large_total",
    "Requests refused with 413 because the body passed its cap, by route kind",
    ["route_kind"],
    registry=REGISTRY,
)
# erasure (processor/erase.py, query_api/routes/erasure.py)
ERASURES_REQUESTED = Counter(
    "funnelstream_erasures_requested_total",
    "Visitor erasures durably appended to the log (a user erasure counts its visitors)",
    ["kind"],
    registry=REGISTRY,
)
PROCESSOR_ERASURES = Counter(
    "funnelstream_processor_erasures_total",
    "Visitor erasures done by the processor (a replay after a crash counts one again)",
    registry=REGISTRY,
)
PROCESSOR_ERASURE_SECONDS = Histogram(
    "funnelstream_processor_erasure_seconds",
    "Time to erase one visitor from every table",
    registry=REGISTRY,
)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe` for each amount, with one increment per bucket instead of one
    per amount: the processor observes every event's freshness and every conversion's
    time, and per-value `observe` (a lock and a bucket scan each) was ~5% of its thread.
    Uses the client's bucket layout (non-cumulative `_buckets` per `_upper_bounds`, one
    `_sum`), which tests/funnelstream/test_metrics.py checks against `observe`."""
    bounds: list[float] = histogram._upper_bounds  # noqa: SLF001
    per_bucket = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        total += amount
        if amount != amount:  # NaN: observe() adds it to the sum and to no bucket
            continue
        # observe() takes the first bound at or above the amount (the last is +Inf).
        per_bucket[bisect_left(bounds, amount)] += 1
    if not any(per_bucket):
        return
    histogram._sum.inc(total)  # noqa: SLF001
    for bucket, n in zip(histogram._buckets, per_bucket, strict=True):  # noqa: SLF001
        if n:
            bucket.inc(n)
