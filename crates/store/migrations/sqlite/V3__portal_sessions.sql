-- Billing page sessions (POST /v1/portal_sessions). A row is a single-use link that,
-- once redeemed, is the browser session it became. Only SHA-256 hashes of the link
-- token and of the session secret are stored.
CREATE TABLE portal_sessions (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    link_hash TEXT NOT NULL UNIQUE,
    link_expires_at INTEGER NOT NULL,
    return_url TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    session_hash TEXT UNIQUE,
    redeemed_at INTEGER,
    session_expires_at INTEGER,
    -- Redeemed exactly when it has a session: the UPDATE that redeems sets all three.
    CHECK ((session_hash IS NULL) = (redeemed_at IS NULL)),
    CHECK ((session_hash IS NULL) = (session_expires_at IS NULL))
) STRICT;

-- For the bounded clean-up of expired links and sessions.
CREATE INDEX portal_sessions_link_expiry ON portal_sessions (link_expires_at) WHERE redeemed_at IS NULL;
CREATE INDEX portal_sessions_session_expiry ON portal_sessions (session_expires_at)
    WHERE session_expires_at IS NOT NULL;
