-- API tokens: only a hash of each is kept (the token itself is printed once, when made).
-- Numbered 0002: the gateway's 0001 (idempotency keys) is written in parallel; the migrator
-- applies whichever versions are missing from gateway_migrations, in order, so 0001 arriving
-- later is applied then.
CREATE TABLE gateway_tokens (
    name        text        PRIMARY KEY,
    role        text        NOT NULL CHECK (role IN ('viewer', 'submitter', 'admin')),
    token_hash  bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
