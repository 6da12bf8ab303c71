"""The reliability suite ("proof under fire"): crashes, outages and faults, and what they must not change."""
