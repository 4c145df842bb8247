-- was: 0002_metrics
-- (the platform's migration of that id before the ingest and the orchestrator owned their tables:
-- a database that recorded it there adopts this one without running it again)

-- Metrics (issue 5): one row per training-step point, written by metrics_ingest with COPY.
--
-- Identity: a point is (job_id, source, seq) for ever (MetricsReported's contract). job_id and
-- source are stored once, in metric_jobs and metric_sources, and referenced by small integers:
-- a row carries 8 bytes of identity instead of two strings, and so does every index entry.
--
-- The unique index metrics_identity is what makes redelivery harmless. It is on
-- (job_no, step, source_no, seq): seq already identifies the point within its source, and a
-- point's step never changes, so adding step keeps exactly the same uniqueness while the same
-- index also serves every query by step range (one index less to maintain on every COPY).
--
-- Partitioned by hash of job: every query names one job, so it reads one partition, and each
-- partition's indexes stay a sixteenth of the size at hundreds of millions of rows.
--
-- No foreign key from metrics to metric_jobs/metric_sources: a foreign key checks every row of
-- every COPY with a trigger. The writer registers the job and source (committed) before it
-- writes their rows.

CREATE TABLE metric_jobs (
    job_no          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          text        NOT NULL UNIQUE,
    pipeline_id     text,
    stage           text,
    attempt         integer,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE metric_sources (
    source_no       integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_no          integer     NOT NULL REFERENCES metric_jobs (job_no),
    source          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_no, source)
);

-- The seed's StructuredMetric fields and METRICS.md's canonical names, one column each (NaN and
-- infinities kept as such); everything else a trainer logs is in custom (NULL when empty).
CREATE TABLE metrics (
    job_no                      integer          NOT NULL,
    source_no                   integer          NOT NULL,
    seq                         bigint           NOT NULL,
    step                        bigint           NOT NULL,
    epoch                       double precision,
    ts                          timestamptz      NOT NULL,
    loss                        double precision,
    policy_loss                 double precision,
    value_loss                  double precision,
    learning_rate               double precision,
    grad_norm                   double precision,
    reward_mean                 double precision,
    reward_std                  double precision,
    kl_divergence               double precision,
    entropy                     double precision,
    response_length_mean        double precision,
    clip_frac                   double precision,
    throughput_samples_per_sec  double precision,
    tokens_per_second           double precision,
    gpu_memory_allocated_gb     double precision,
    gpu_utilization_percent     double precision,
    eval_loss                   double precision,
    eval_accuracy               double precision,
    custom                      jsonb
) PARTITION BY HASH (job_no);

CREATE TABLE metrics_p00 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 0);
CREATE TABLE metrics_p01 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 1);
CREATE TABLE metrics_p02 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 2);
CREATE TABLE metrics_p03 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 3);
CREATE TABLE metrics_p04 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 4);
CREATE TABLE metrics_p05 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 5);
CREATE TABLE metrics_p06 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 6);
CREATE TABLE metrics_p07 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 7);
CREATE TABLE metrics_p08 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 8);
CREATE TABLE metrics_p09 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 9);
CREATE TABLE metrics_p10 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 10);
CREATE TABLE metrics_p11 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 11);
CREATE TABLE metrics_p12 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 12);
CREATE TABLE metrics_p13 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 13);
CREATE TABLE metrics_p14 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 14);
CREATE TABLE metrics_p15 PARTITION OF metrics FOR VALUES WITH (MODULUS 16, REMAINDER 15);

-- Dedup of redelivered points, and queries by step (latest by step, step ranges, buckets).
CREATE UNIQUE INDEX metrics_identity ON metrics (job_no, step, source_no, seq);
-- Queries by time (latest points, time ranges, time buckets).
CREATE INDEX metrics_job_time ON metrics (job_no, ts);

-- For people at a SQL prompt: the rows with their job and source by name.
CREATE VIEW metric_points AS
SELECT j.job_id, s.source, m.*
FROM metrics m
JOIN metric_jobs j ON j.job_no = m.job_no
JOIN metric_sources s ON s.source_no = m.source_no;
