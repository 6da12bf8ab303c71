-- The intake (starter/): alert rules, and every alert received with what became of it.

-- An alert named alertname whose labels include match runs opscode on the host its host_label names.
CREATE TABLE alert_rules (
    name            text PRIMARY KEY,
    alertname       text NOT NULL CHECK (alertname <> ''),
    match           jsonb NOT NULL DEFAULT '{}',
    opscode         text NOT NULL,
    host_label      text NOT NULL DEFAULT 'nc_ip',
    reason_category text NOT NULL,
    settings        jsonb NOT NULL DEFAULT '{}',
    enabled         boolean NOT NULL DEFAULT true,
    priority        integer NOT NULL DEFAULT 100,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text NOT NULL DEFAULT ''
);

-- The product's two examples (DOMAIN.md): a hung host is rebooted, a hardware alarm locks the host.
INSERT INTO alert_rules (name, alertname, opscode, host_label, reason_category, settings, updated_by) VALUES
    ('nc-hang-reboot', 'nc_hang_exception', '0x400012', 'nc_ip', 'hang',
     '{"alertRuleName": "nc_hang_exception", "needDumpCn": 0, "needLimit": 1}', 'migration 0008'),
    ('hardware-lock', 'hardware_exception_alarm', '0x410A01', 'nc_ip', 'hardware',
     '{"alertRuleName": "hardware_exception_alarm"}', 'migration 0008')
ON CONFLICT (name) DO NOTHING;

-- One row per distinct alert (Alertmanager's fingerprint and startsAt): the deduplication key, and the
-- record of what was done with it. A row in 'pending' was claimed by a request that did not finish.
CREATE TABLE alert_receipts (
    fingerprint  text NOT NULL,
    starts_at    timestamptz NOT NULL,
    alertname    text NOT NULL,
    status       text NOT NULL CHECK (status IN ('firing', 'resolved')),
    outcome      text NOT NULL CHECK (outcome IN
                     ('pending', 'started', 'deduplicated', 'resolved', 'unmapped', 'refused')),
    rule_name    text,
    workflow_id  text,
    message      text NOT NULL DEFAULT '',
    labels       jsonb NOT NULL DEFAULT '{}',
    receiver     text NOT NULL DEFAULT '',
    deliveries   integer NOT NULL DEFAULT 1,
    received_at  timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fingerprint, starts_at, status)
);

CREATE INDEX alert_receipts_received_at_idx ON alert_receipts (received_at);
