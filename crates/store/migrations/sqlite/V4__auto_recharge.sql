-- Auto Top-Up: each account's rule, and the auto top-ups it starts.
--
-- A rule row exists once the customer saved settings; an account without one reads
-- as off. An auto top-up is a top-up with source `auto_recharge` carrying the
-- recharge's sequence number; the partial unique index below, not a flag in memory,
-- is what keeps at most one of them open per account across processes.

CREATE TABLE auto_recharge_rules (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id),
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    threshold_micros INTEGER NOT NULL CHECK (threshold_micros > 0 AND threshold_micros % 10000 = 0),
    target_micros INTEGER NOT NULL CHECK (target_micros > threshold_micros AND target_micros % 10000 = 0),
    monthly_cap_micros INTEGER NOT NULL CHECK (monthly_cap_micros >= 0 AND monthly_cap_micros % 10000 = 0),
    status TEXT NOT NULL CHECK (status IN ('armed', 'in_flight', 'failed', 'action_required', 'cap_reached')),
    -- The processor's failure code, for `failed` and `action_required`.
    status_reason TEXT,
    -- When it failed (`failed`, `action_required`), or the start of the cycle whose cap
    -- was reached (`cap_reached`).
    status_at INTEGER,
    -- Until when the status keeps the rule from being due (end of the cool-down, end of
    -- the capped cycle), so that polling for due rules skips it cheaply.
    blocked_until INTEGER,
    last_sequence INTEGER NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    in_flight_sequence INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    CHECK ((status = 'in_flight') = (in_flight_sequence IS NOT NULL)),
    CHECK (in_flight_sequence IS NULL OR in_flight_sequence = last_sequence),
    CHECK ((status IN ('failed', 'action_required')) = (status_reason IS NOT NULL)),
    CHECK ((status IN ('failed', 'action_required', 'cap_reached')) = (status_at IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- What `due_auto_recharges` scans: switched-on rules with nothing in flight.
CREATE INDEX auto_recharge_rules_idle ON auto_recharge_rules (account_id)
    WHERE enabled = 1 AND in_flight_sequence IS NULL;

-- Exactly the auto top-ups carry a recharge sequence (SQLite adds constraints only
-- with a column; no auto top-up was ever recorded before this migration).
ALTER TABLE topups ADD COLUMN recharge_sequence INTEGER
    CHECK (recharge_sequence > 0)
    CHECK ((source = 'auto_recharge') = (recharge_sequence IS NOT NULL));

CREATE UNIQUE INDEX topups_recharge_sequence ON topups (account_id, recharge_sequence)
    WHERE recharge_sequence IS NOT NULL;

-- At most one open auto top-up per account: the backstop of "exactly one in flight".
CREATE UNIQUE INDEX topups_one_open_auto_recharge ON topups (account_id)
    WHERE source = 'auto_recharge' AND status IN ('pending', 'requires_action');
