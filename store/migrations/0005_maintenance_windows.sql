-- Weekly maintenance windows per cluster (domain/maintenance.py): cold migrations (RecoverVmInTnb) run
-- only inside one. A window opens each week on weekday (0 = Monday .. 6 = Sunday) at start_time on the
-- wall clock of time_zone (an IANA name, checked by the application) and stays open duration_minutes.
-- Configuration, not seeded: python -m store.maintenance set ... (store.seed has the dev stack's).
CREATE TABLE maintenance_windows (
    id               bigserial PRIMARY KEY,
    cluster_id       text NOT NULL CHECK (cluster_id <> ''),
    weekday          smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6),
    start_time       time NOT NULL,
    duration_minutes integer NOT NULL CHECK (duration_minutes BETWEEN 1 AND 10080),
    time_zone        text NOT NULL,
    note             text NOT NULL DEFAULT '',
    updated_by       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cluster_id, weekday, start_time)
);
