-- The gateway's own tables. Idempotency keys of POST /v1/pipelines: a key is claimed by the
-- first request that carries it (the row is inserted with no response yet), and the response
-- is stored once that request is done; a repeat with the same body gets the stored response,
-- with another body a 409. In PostgreSQL so that every gateway instance agrees.
CREATE TABLE idempotency_keys (
    key           text        PRIMARY KEY,
    request_hash  text        NOT NULL,   -- sha256 of the content type and the body
    status        integer,                -- NULL while the first request is in flight
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
