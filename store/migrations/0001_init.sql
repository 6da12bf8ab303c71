-- The event list, the audit of operator actions, and every control-plane call.
-- Applied by store.db.migrate inside one transaction; never edit an applied migration, add a new file.

CREATE TABLE operations (
    id              bigserial PRIMARY KEY,
    workflow_id     text NOT NULL UNIQUE,
    run_id          text,
    opscode         text NOT NULL,
    workflow_type   text NOT NULL,
    hosts           text[] NOT NULL DEFAULT '{}',   -- NC IPs
    nc_ids          text[] NOT NULL DEFAULT '{}',
    region_id       text,
    cluster_id      text,
    source          text NOT NULL CHECK (source IN ('manual', 'alert', 'schedule')),
    requester       text NOT NULL,
    reason_category text NOT NULL CHECK (reason_category IN (
                        'hardware', 'kernel', 'network', 'system', 'hang', 'security', 'internal_reboot')),
    reason          text NOT NULL DEFAULT '',
    ticket          text,
    settings        jsonb NOT NULL DEFAULT '{}',
    -- domain.operations.OpsState; a new state needs a migration that replaces this constraint.
    state           text NOT NULL DEFAULT 'Validating' CONSTRAINT operations_state_check CHECK (state IN (
                        'Validating', 'PendingApproval', 'Running', 'StepFailed', 'Succeeded', 'Failed',
                        'Refused', 'Rejected', 'Abandoned', 'Cancelled', 'TimedOut')),
    error_type      text,
    error_message   text,
    result          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE INDEX operations_state_idx ON operations (state);
CREATE INDEX operations_opscode_created_at_idx ON operations (opscode, created_at);
-- "which operations touched this host": hosts @> ARRAY['10.0.0.1']
CREATE INDEX operations_hosts_idx ON operations USING gin (hosts);

CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    workflow_id   text,
    opscode       text,
    nc_ip         text,
    action        text NOT NULL,                    -- e.g. lock_nc, refuse, approve
    result        text NOT NULL CHECK (result IN ('ok', 'refused', 'failed')),
    error_type    text,
    error_message text,
    request_id    text,
    params        jsonb NOT NULL DEFAULT '{}',
    operator      text,
    reason        text,
    ticket        text,
    -- Set by writers that may run twice (a retried activity): the second insert is dropped.
    -- NULL keys never collide, so entries without one are always written.
    dedupe_key    text UNIQUE
);

CREATE INDEX audit_log_workflow_id_idx ON audit_log (workflow_id);
CREATE INDEX audit_log_nc_ip_at_idx ON audit_log (nc_ip, at);

CREATE TABLE houyi_calls (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,               -- when the call started
    action      text NOT NULL,
    request_id  text NOT NULL,
    code        integer NOT NULL,                   -- the envelope code; 0 when no answer came back
    message     text NOT NULL,
    caller      text NOT NULL,                      -- the workflow id
    token       text,                               -- idempotency token of a mutating call
    latency_ms  double precision NOT NULL,
    params      jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX houyi_calls_caller_idx ON houyi_calls (caller);
CREATE INDEX houyi_calls_action_at_idx ON houyi_calls (action, at);
