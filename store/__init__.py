"""PostgreSQL persistence: the event list (operations), the audit log, the control-plane call log and the
per-opscode configuration tables.

``store.repository.OperationStore`` is the API; ``store.db`` holds the pool and the migrations,
``store.embedded`` the local server for the dev stack and the tests, ``store.errors`` what callers catch.
"""
