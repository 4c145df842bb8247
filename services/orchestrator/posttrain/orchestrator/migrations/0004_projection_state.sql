-- The projection's memory, bounded by active work: each pipelines row also holds the pipeline's
-- state as the projection folded it (core.snapshot.encode_archived, the snapshots' codec) and
-- the offset of the last event it reflects (on the pipeline's partition of the events topic).
-- A restarted projection resumes from projection_offsets and loads a pipeline's state from
-- here when an event about it arrives; an event at or before state_offset is already in it.
-- NULL (rows projected before this migration): the projection refolds that partition.

ALTER TABLE pipelines ADD COLUMN state bytea;
ALTER TABLE pipelines ADD COLUMN state_offset bigint;
