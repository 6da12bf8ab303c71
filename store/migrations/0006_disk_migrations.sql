-- Disk live migrations (workflows/disk_live_migration.py): one row per disk an operation holds, from plan
-- to end. `copying` marks the ones whose copy runs: at most max_running of those per storage cluster
-- (counted on the source and on the destination: both ends carry the copy's traffic).
CREATE TABLE disk_leases (
    disk_id             text PRIMARY KEY,
    workflow_id         text NOT NULL,
    src_storage_cluster text NOT NULL,
    dst_storage_cluster text NOT NULL,
    copying             boolean NOT NULL DEFAULT false,
    acquired_at         timestamptz NOT NULL DEFAULT now(),
    copying_since       timestamptz
);

CREATE INDEX disk_leases_workflow_id_idx ON disk_leases (workflow_id);

CREATE TABLE disk_migration_limits (
    storage_cluster text PRIMARY KEY,        -- '*': every storage cluster without a row of its own
    max_running     integer NOT NULL CHECK (max_running >= 1),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text NOT NULL DEFAULT ''
);

INSERT INTO disk_migration_limits (storage_cluster, max_running, updated_by) VALUES ('*', 2, 'migration 0006')
ON CONFLICT (storage_cluster) DO NOTHING;

-- Disk source recycle: one row per migration task it handled, so a task is recycled once and a skip is
-- never silent (the report lists it; this keeps it across runs).
CREATE TABLE disk_recycles (
    task_id     text PRIMARY KEY,
    disk_id     text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('recycled', 'skipped', 'failed')),
    reason      text NOT NULL DEFAULT '',
    not_loaded  integer,
    workflow_id text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

-- A disk migration an engineer asks for is approved by the ops admins (no rollback once it runs).
INSERT INTO approval_policies
    (opscode, allow_manual_report, manual_report_needs_approval, approvers, min_approvals,
     approval_timeout_minutes, updated_by)
VALUES ('DiskLiveMigration', true, true, '{ops-admins}', 1, 1440, 'migration 0006')
ON CONFLICT (opscode) DO NOTHING;
