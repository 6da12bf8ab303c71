-- Per-opscode configuration (DOMAIN.md "Flow control", "Approval and manual report").
-- No row for an opscode means: no flow control, and the catalog's approval defaults.

CREATE TABLE flow_control_rules (
    opscode                text PRIMARY KEY,
    enabled                boolean NOT NULL DEFAULT true,
    -- recommended: at most 1 execution per region and per cluster every 168 h
    region_window_minutes  integer NOT NULL DEFAULT 10080 CHECK (region_window_minutes > 0),
    region_limit           integer NOT NULL DEFAULT 1 CHECK (region_limit >= 0),
    cluster_window_minutes integer NOT NULL DEFAULT 10080 CHECK (cluster_window_minutes > 0),
    cluster_limit          integer NOT NULL DEFAULT 1 CHECK (cluster_limit >= 0),
    host_window_minutes    integer CHECK (host_window_minutes > 0),
    host_limit             integer CHECK (host_limit >= 0),
    -- the product only drops an execution over a limit; it never queues it
    policy                 text NOT NULL DEFAULT 'abandon' CHECK (policy IN ('abandon')),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    updated_by             text,
    CONSTRAINT flow_control_rules_host_window_and_limit_together
        CHECK ((host_window_minutes IS NULL) = (host_limit IS NULL))
);

-- One row per execution let through, counted against the windows above.
CREATE TABLE flow_control_admissions (
    id           bigserial PRIMARY KEY,
    opscode      text NOT NULL,
    region_id    text NOT NULL,
    cluster_id   text NOT NULL,
    nc_ip        text,
    workflow_id  text NOT NULL,
    admitted_at  timestamptz NOT NULL DEFAULT now(),
    -- a retried admission check of the same workflow is counted once
    UNIQUE (workflow_id, opscode)
);

CREATE INDEX flow_control_admissions_region_idx ON flow_control_admissions (opscode, region_id, admitted_at);
CREATE INDEX flow_control_admissions_cluster_idx ON flow_control_admissions (opscode, cluster_id, admitted_at);
CREATE INDEX flow_control_admissions_host_idx ON flow_control_admissions (opscode, nc_ip, admitted_at);

CREATE TABLE approval_policies (
    opscode                      text PRIMARY KEY,
    allow_manual_report          boolean NOT NULL DEFAULT true,
    manual_report_needs_approval boolean NOT NULL DEFAULT true,
    approvers                    text[] NOT NULL DEFAULT '{}',
    approval_timeout_minutes     integer NOT NULL DEFAULT 1440 CHECK (approval_timeout_minutes > 0),
    updated_at                   timestamptz NOT NULL DEFAULT now(),
    updated_by                   text
);
