"""Running the service on one machine: the dev stack (``make run``) and the process supervision it shares with the end-to-end tests."""
