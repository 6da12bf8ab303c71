-- The operation lifecycle (issue 3): admission verdicts, the storm breaker, the capacity guard,
-- approver groups and minimum approvals, host leases, and the product's recommended configuration.
-- Seeds use ON CONFLICT DO NOTHING: a row an operator already wrote for that opscode or cluster is kept.

-- ---- operation states: TimedOut became Expired -----------------------------------------------------

-- The only timeout that ends an operation is the approval's, and the product calls that Expired.
-- Drop first: the old constraint does not allow the rows their new state.
ALTER TABLE operations DROP CONSTRAINT operations_state_check;
UPDATE operations SET state = 'Expired' WHERE state = 'TimedOut';
ALTER TABLE operations ADD CONSTRAINT operations_state_check CHECK (state IN (
    'Validating', 'PendingApproval', 'Running', 'StepFailed', 'Succeeded', 'Failed',
    'Refused', 'Rejected', 'Abandoned', 'Cancelled', 'Expired'));

-- ---- admissions: every verdict is recorded, not only the executions let through ---------------------

ALTER TABLE flow_control_admissions
    ADD COLUMN source   text NOT NULL DEFAULT 'manual'
                        CHECK (source IN ('manual', 'alert', 'schedule')),
    -- rows made before this migration were all let through
    ADD COLUMN verdict  text NOT NULL DEFAULT 'admitted'
                        CHECK (verdict IN ('admitted', 'abandoned', 'held_for_approval')),
    ADD COLUMN reason   text,
    -- needLimit = 0: the limits were not applied; kept for the audit trail
    ADD COLUMN bypassed boolean NOT NULL DEFAULT false,
    -- the whole decision (counts, the rule and storm breaker as they were), returned again when the
    -- same workflow asks again, so a retried admission sees what the first one decided
    ADD COLUMN decision jsonb;

-- the storm breaker's count: alert-sourced admissions of any opscode in one cluster within the hour
CREATE INDEX flow_control_admissions_storm_idx ON flow_control_admissions (cluster_id, source, admitted_at);

-- ---- storm breaker ----------------------------------------------------------------------------------

-- When a cluster's automatically submitted operations reach `threshold` within `window_minutes`,
-- further automatic ones there are held for a person's approval (false alarms during a large failure).
CREATE TABLE storm_breakers (
    cluster_id     text PRIMARY KEY,            -- '*': every cluster without a row of its own
    enabled        boolean NOT NULL DEFAULT true,
    threshold      integer NOT NULL DEFAULT 10 CHECK (threshold >= 0),
    window_minutes integer NOT NULL DEFAULT 60 CHECK (window_minutes > 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text
);

INSERT INTO storm_breakers (cluster_id, updated_by) VALUES ('*', 'migration 0003')
ON CONFLICT (cluster_id) DO NOTHING;

-- ---- capacity guard ---------------------------------------------------------------------------------

-- An operation that takes hosts out of service is held for approval when it would leave its cluster
-- with fewer schedulable hosts than this share (Kubernetes node-health remediation keeps a minimum too).
CREATE TABLE capacity_guards (
    cluster_id            text PRIMARY KEY,     -- '*': every cluster without a row of its own
    enabled               boolean NOT NULL DEFAULT true,
    min_schedulable_share numeric(4, 3) NOT NULL DEFAULT 0.800
                          CHECK (min_schedulable_share BETWEEN 0 AND 1),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    updated_by            text
);

INSERT INTO capacity_guards (cluster_id, updated_by) VALUES ('*', 'migration 0003')
ON CONFLICT (cluster_id) DO NOTHING;

-- ---- approvers --------------------------------------------------------------------------------------

-- 2-of-N approvals: an operation runs once this many distinct approvers said yes.
ALTER TABLE approval_policies
    ADD COLUMN min_approvals integer NOT NULL DEFAULT 1 CHECK (min_approvals >= 1);

-- approval_policies.approvers lists users and group names; a group name expands to its members.
CREATE TABLE approver_groups (
    group_name text PRIMARY KEY,
    members    text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text
);

-- ---- host leases ------------------------------------------------------------------------------------

-- At most one mutating operation per NC at a time, across every worker: the primary key is the lease.
CREATE TABLE host_leases (
    nc_ip       text PRIMARY KEY,
    nc_id       text,
    cluster_id  text,
    workflow_id text NOT NULL,
    opscode     text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);

-- the capacity guard counts the hosts other operations hold in the cluster
CREATE INDEX host_leases_cluster_id_idx ON host_leases (cluster_id);
-- a multi-host operation releases everything it holds
CREATE INDEX host_leases_workflow_id_idx ON host_leases (workflow_id);

-- ---- the product's recommended configuration (DOMAIN.md "Flow control") -----------------------------

-- On: the disruptive opscodes, at most one execution per region and per cluster every 168 h.
-- Off (same windows, ready to switch on): locks, re-online and the cleanups.
INSERT INTO flow_control_rules
    (opscode, enabled, region_window_minutes, region_limit, cluster_window_minutes, cluster_limit, updated_by)
VALUES
    ('0x400012',         true,  10080, 1, 10080, 1, 'migration 0003'),
    ('0x400003',         true,  10080, 1, 10080, 1, 'migration 0003'),
    ('0x40003000001001', true,  10080, 1, 10080, 1, 'migration 0003'),
    ('0x400018',         true,  10080, 1, 10080, 1, 'migration 0003'),
    ('0x410A01',         false, 10080, 1, 10080, 1, 'migration 0003'),
    ('0x400011',         false, 10080, 1, 10080, 1, 'migration 0003'),
    ('0x10001000008002', false, 10080, 1, 10080, 1, 'migration 0003'),
    ('0x3000000000802',  false, 10080, 1, 10080, 1, 'migration 0003')
ON CONFLICT (opscode) DO NOTHING;

-- Every implemented or in-scope opscode: manual report allowed and approved by one of ops-admins
-- within 24 h; except a lock, which is reversible and leaves VMs running, so it runs at once (the
-- capacity guard and the storm breaker can still hold it for approval). The group's members are not seeded here: the dev stack seeds them (store/seed.py),
-- production names its own.
INSERT INTO approval_policies
    (opscode, allow_manual_report, manual_report_needs_approval, approvers, min_approvals,
     approval_timeout_minutes, updated_by)
VALUES
    ('0x410A01',         true, false, '{ops-admins}', 1, 1440, 'migration 0003'),
    ('0x400012',         true, true, '{ops-admins}', 1, 1440, 'migration 0003'),
    ('0x400011',         true, true, '{ops-admins}', 1, 1440, 'migration 0003'),
    ('0x400003',         true, true, '{ops-admins}', 1, 1440, 'migration 0003'),
    ('0x40003000001001', true, true, '{ops-admins}', 1, 1440, 'migration 0003'),
    ('0x10001000008002', true, true, '{ops-admins}', 1, 1440, 'migration 0003'),
    ('0x3000000000802',  true, true, '{ops-admins}', 1, 1440, 'migration 0003')
ON CONFLICT (opscode) DO NOTHING;
