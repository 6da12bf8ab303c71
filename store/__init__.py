"""PostgreSQL persistence: the event list (operations), the audit log, the control-plane call log, the
per-opscode configuration tables and the lifecycle's admissions and host leases.

``store.repository.OperationStore`` is the API, and its ``lifecycle`` (``store.lifecycle.LifecycleStore``)
the flow control, approval policies and host leases on the same pool; ``store.db`` holds the pool and the
migrations, ``store.embedded`` the local server for the dev stack and the tests, ``store.seed`` the command
that migrates and seeds the dev approvers, ``store.errors`` what callers catch.
"""
