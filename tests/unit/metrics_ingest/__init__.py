"""Unit tests of metrics_ingest: the pure core and the pieces without I/O."""
