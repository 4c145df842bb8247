-- Each agent's stage slots, as its latest heartbeat announces them (AgentHeartbeat.slots): how
-- many stages it runs at once, placement's limit beside its free GPUs. NULL: the agent announces
-- no slot limit (agents older than slots in heartbeats), or its row was projected before this
-- migration and waits for its next heartbeat.

ALTER TABLE agents ADD COLUMN slots integer;
