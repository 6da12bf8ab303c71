"""Shared fixtures live in tests/fixtures/, one module per real part they start."""

pytest_plugins = [
    "tests.fixtures.pg",
    "tests.fixtures.simulator",
    "tests.fixtures.temporal",
    "tests.fixtures.stack",
    "tests.fixtures.evacuation",
    "tests.fixtures.disks",
    "tests.fixtures.intake",
    "tests.fixtures.debian",
]
