-- Card payments: the processor customer and default card of each account,
-- top-ups, refunds, disputes and processed webhook events.
--
-- A refund or a lost dispute can take back money that was already spent, so a
-- prepaid balance may now go below zero, but only when the account is flagged
-- for attention (`attention_since`). SQLite cannot alter a CHECK, so the table
-- is rebuilt; the migration runs with foreign keys off, and the store runs
-- `PRAGMA foreign_key_check` afterwards.

CREATE TABLE accounts_v2 (
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
    attention_since INTEGER,
    -- Second line of defence: the application refuses such debits first.
    CHECK (available_micros + credit_limit_micros >= 0 OR attention_since IS NOT NULL)
) STRICT;

INSERT INTO accounts_v2 (id, name, email, created_at, billing_mode, credit_limit_micros, available_micros,
    held_micros, journal_sequence, cycle_start, cycle_spend_micros, previous_cycle_spend_micros,
    lifetime_spend_micros, cycle_savings_micros, lifetime_savings_micros, personal_discount_percent)
SELECT id, name, email, created_at, billing_mode, credit_limit_micros, available_micros,
    held_micros, journal_sequence, cycle_start, cycle_spend_micros, previous_cycle_spend_micros,
    lifetime_spend_micros, cycle_savings_micros, lifetime_savings_micros, personal_discount_percent
FROM accounts;

DROP TABLE accounts;
ALTER TABLE accounts_v2 RENAME TO accounts;

CREATE TABLE payment_profiles (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id),
    processor_customer_id TEXT UNIQUE,
    card_id TEXT,
    card_brand TEXT,
    card_last4 TEXT,
    card_exp_month INTEGER CHECK (card_exp_month BETWEEN 1 AND 12),
    card_exp_year INTEGER,
    card_added_at INTEGER,
    updated_at INTEGER NOT NULL,
    CHECK ((card_id IS NULL) = (card_brand IS NULL)
       AND (card_id IS NULL) = (card_last4 IS NULL)
       AND (card_id IS NULL) = (card_exp_month IS NULL)
       AND (card_id IS NULL) = (card_exp_year IS NULL)
       AND (card_id IS NULL) = (card_added_at IS NULL))
) STRICT, WITHOUT ROWID;

-- Hosted card-setup pages opened for an account; each is confirmed at most once,
-- so a replayed return link can never bring back a replaced card.
CREATE TABLE card_setups (
    session_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    card_id TEXT,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    CHECK ((card_id IS NULL) = (completed_at IS NULL))
) STRICT, WITHOUT ROWID;

CREATE TABLE topups (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0 AND amount_micros % 10000 = 0),
    source TEXT NOT NULL CHECK (source IN ('saved_card', 'hosted_page', 'auto_recharge')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'requires_payment_method', 'requires_action',
        'succeeded', 'failed', 'canceled')),
    idempotency_key TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    checkout_session_id TEXT UNIQUE,
    payment_reference TEXT UNIQUE,
    charge_reference TEXT,
    card_brand TEXT,
    card_last4 TEXT,
    failure_code TEXT,
    failure_message TEXT,
    credited_transaction_id TEXT UNIQUE REFERENCES journal_transactions (id),
    refunded_micros INTEGER NOT NULL DEFAULT 0 CHECK (refunded_micros >= 0 AND refunded_micros <= amount_micros),
    disputed_micros INTEGER NOT NULL DEFAULT 0 CHECK (disputed_micros >= 0),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    succeeded_at INTEGER,
    UNIQUE (account_id, idempotency_key),
    -- Credited exactly when succeeded: the credit and the status change are one write.
    CHECK ((status = 'succeeded') = (credited_transaction_id IS NOT NULL)),
    CHECK ((status = 'succeeded') = (succeeded_at IS NOT NULL))
) STRICT;

CREATE INDEX topups_by_account ON topups (account_id, created_at);
CREATE INDEX topups_open ON topups (created_at)
    WHERE status IN ('pending', 'requires_payment_method', 'requires_action');
CREATE INDEX topups_by_charge ON topups (charge_reference) WHERE charge_reference IS NOT NULL;

CREATE TABLE topup_refunds (
    id TEXT PRIMARY KEY,
    topup_id TEXT NOT NULL REFERENCES topups (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0),
    state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    processor_refund_id TEXT UNIQUE,
    reason TEXT NOT NULL,
    idempotency_key TEXT,
    request_fingerprint TEXT,
    taken_transaction_id TEXT NOT NULL UNIQUE REFERENCES journal_transactions (id),
    returned_transaction_id TEXT UNIQUE REFERENCES journal_transactions (id),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (topup_id, idempotency_key),
    CHECK ((state = 'failed') = (returned_transaction_id IS NOT NULL))
) STRICT;

CREATE TABLE topup_disputes (
    id TEXT PRIMARY KEY,
    topup_id TEXT NOT NULL REFERENCES topups (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0),
    status TEXT NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    taken_transaction_id TEXT UNIQUE REFERENCES journal_transactions (id),
    returned_transaction_id TEXT UNIQUE REFERENCES journal_transactions (id),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Webhook events already applied, by the processor's event id.
CREATE TABLE processor_events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    received_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
