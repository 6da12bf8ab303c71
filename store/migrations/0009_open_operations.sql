-- The worker's open-operation gauges read this every 15 s from every worker: only unfinished rows.
CREATE INDEX IF NOT EXISTS operations_open ON operations (opscode, state) WHERE finished_at IS NULL;
