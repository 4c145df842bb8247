"""The pure core of metrics ingest: no I/O, no asyncio, no clock (times are passed in).

- ``rows``: a point -> the row that PostgreSQL stores, with the checks that keep COPY from failing.
- ``wire``: ``MetricsReported`` messages -> rows, by the contract's fast reader or its models.
- ``batching``: when a batch is due (size, age), what it commits, when to pause consumption.
- ``backoff``: how long to wait before retrying PostgreSQL.
- ``downsample``: bucket arithmetic shared with the SQL, and LTTB.
"""
