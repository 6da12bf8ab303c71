"""The adapter to the ECS control plane (Houyi): its port, wire protocol, errors and HTTP client."""
