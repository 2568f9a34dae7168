-- Tollgate's SQLite schema. Money is INTEGER micro-dollars; times are INTEGER
-- microseconds since the Unix epoch (UTC).

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    billing_mode TEXT NOT NULL DEFAULT 'prepaid' CHECK (billing_mode IN ('prepaid', 'invoice')),
    credit_limit_micros INTEGER NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    available_micros INTEGER NOT NULL DEFAULT 0,
    held_micros INTEGER NOT NULL DEFAULT 0 CHECK (held_micros >= 0),
    journal_sequence INTEGER NOT NULL DEFAULT 0,
    cycle_start INTEGER NOT NULL,
    cycle_spend_micros INTEGER NOT NULL DEFAULT 0,
    previous_cycle_spend_micros INTEGER NOT NULL DEFAULT 0,
    lifetime_spend_micros INTEGER NOT NULL DEFAULT 0,
    cycle_savings_micros INTEGER NOT NULL DEFAULT 0,
    lifetime_savings_micros INTEGER NOT NULL DEFAULT 0,
    personal_discount_percent INTEGER CHECK (personal_discount_percent BETWEEN 0 AND 100),
    -- Second line of defence: the application refuses such debits first.
    CHECK (available_micros + credit_limit_micros >= 0)
) STRICT;

-- Per-action prices agreed by Sales; they win over tiers and discounts.
CREATE TABLE account_prices (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    action TEXT NOT NULL,
    price_micros INTEGER NOT NULL CHECK (price_micros >= 0),
    PRIMARY KEY (account_id, action)
) STRICT, WITHOUT ROWID;

-- One row per money movement. `sequence` numbers an account's journal
-- 1, 2, 3 … without gaps, so the chain of balances can be checked.
CREATE TABLE journal_transactions (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    available_amount_micros INTEGER NOT NULL,
    available_after_micros INTEGER NOT NULL,
    held_after_micros INTEGER NOT NULL,
    description TEXT NOT NULL,
    reference_id TEXT,
    idempotency_key TEXT,
    request_fingerprint TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (account_id, sequence)
) STRICT;

CREATE UNIQUE INDEX journal_transactions_idempotency
    ON journal_transactions (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Double entry: each transfer debits one ledger account and credits another
-- by the same positive amount, so every transaction sums to zero.
CREATE TABLE transfers (
    transaction_id TEXT NOT NULL REFERENCES journal_transactions (id),
    leg INTEGER NOT NULL,
    from_account TEXT NOT NULL,
    to_account TEXT NOT NULL,
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0),
    CHECK (from_account <> to_account),
    PRIMARY KEY (transaction_id, leg)
) STRICT, WITHOUT ROWID;

CREATE TABLE usage_records (
    transaction_id TEXT PRIMARY KEY REFERENCES journal_transactions (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    action TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_micros INTEGER NOT NULL CHECK (unit_price_micros >= 0),
    unit_list_price_micros INTEGER NOT NULL CHECK (unit_list_price_micros >= 0),
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    list_amount_micros INTEGER NOT NULL CHECK (list_amount_micros >= 0),
    savings_micros INTEGER NOT NULL CHECK (savings_micros >= 0),
    price_source TEXT NOT NULL,
    tier_id TEXT NOT NULL,
    price_book_version TEXT NOT NULL,
    hold_id TEXT,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX usage_records_by_account_time ON usage_records (account_id, created_at);

CREATE TABLE holds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    action TEXT NOT NULL,
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0),
    status TEXT NOT NULL CHECK (status IN ('active', 'captured', 'voided', 'expired')),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    placed_transaction_id TEXT NOT NULL UNIQUE REFERENCES journal_transactions (id),
    closed_transaction_id TEXT REFERENCES journal_transactions (id),
    closed_at INTEGER,
    captured_micros INTEGER,
    CHECK ((status = 'active') = (closed_transaction_id IS NULL))
) STRICT;

CREATE INDEX holds_active_by_expiry ON holds (expires_at) WHERE status = 'active';
CREATE INDEX holds_active_by_account ON holds (account_id, expires_at) WHERE status = 'active';

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    account_id TEXT,
    before_state TEXT,
    after_state TEXT,
    created_at INTEGER NOT NULL
) STRICT;
