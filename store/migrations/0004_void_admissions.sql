-- An operation admitted but never executed (rejected, expired, cancelled while it waited for approval)
-- gives its flow-control slot back: the window counts executions. It still counts for the storm
-- breaker, which measures how many automatic operations a cluster is asking for.
ALTER TABLE flow_control_admissions
    ADD COLUMN voided_at timestamptz,
    ADD COLUMN voided_reason text;
