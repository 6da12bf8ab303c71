-- Weekly maintenance windows per cluster: cold migrations (RecoverVmInTnb) run only inside one.
-- A window opens each week at start_time on weekday (0 = Monday) in time_zone's wall clock.
CREATE TABLE maintenance_windows (
    id               bigserial PRIMARY KEY,
    cluster_id       text NOT NULL,
    weekday          smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6),
    start_time       time NOT NULL,
    duration_minutes integer NOT NULL CHECK (duration_minutes BETWEEN 1 AND 10080),
    time_zone        text NOT NULL,
    note             text NOT NULL DEFAULT '',
    updated_by       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cluster_id, weekday, start_time)
);
