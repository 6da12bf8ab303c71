"""opsctl: ecs-opsflow from the shell (opsctl/cli.py)."""
