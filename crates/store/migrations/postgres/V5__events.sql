-- Events (the outbox) and their delivery to the operator's webhook endpoints.
--
-- An event row is written in the transaction of the change that causes it, together
-- with one delivery row per endpoint that selects its type, so an event exists exactly
-- when its change committed and no endpoint can miss it. Events of one account are
-- written under that account's lock, so their `sequence` order is the order they
-- happened in; deliveries go out in that order per account and endpoint.

CREATE TABLE events (
    sequence BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    reference_id TEXT,
    amount_micros BIGINT,
    balance_micros BIGINT,
    detail TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX events_by_account ON events (account_id, sequence);
CREATE INDEX events_by_type ON events (type, sequence);

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    -- `*` or event type codes joined by commas.
    event_types TEXT NOT NULL CHECK (event_types <> ''),
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);

CREATE TABLE event_deliveries (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_sequence BIGINT NOT NULL REFERENCES events (sequence),
    account_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    -- A claim by one sender: others leave it alone until then (several processes).
    leased_until BIGINT,
    last_status_code BIGINT,
    last_error TEXT,
    last_attempt_at BIGINT,
    delivered_at BIGINT,
    PRIMARY KEY (endpoint_id, event_sequence),
    CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
);

CREATE INDEX event_deliveries_pending ON event_deliveries (endpoint_id, account_id, event_sequence)
    WHERE status = 'pending';
CREATE INDEX event_deliveries_due ON event_deliveries (next_attempt_at) WHERE status = 'pending';

-- Every attempt, for the delivery log.
CREATE TABLE delivery_attempts (
    endpoint_id TEXT NOT NULL,
    event_sequence BIGINT NOT NULL,
    attempt BIGINT NOT NULL CHECK (attempt >= 1),
    attempted_at BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    PRIMARY KEY (endpoint_id, event_sequence, attempt),
    FOREIGN KEY (endpoint_id, event_sequence) REFERENCES event_deliveries (endpoint_id, event_sequence)
);
