"""Pure domain of ECS host operations: models, enums, the opscode catalog and policies. No I/O."""
