-- The foundation: the migrations' own bookkeeping, and a small table the stack tests use to
-- prove that data survives `posttrain stack down` / `up`.

CREATE TABLE schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stack_markers (
    name        text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
