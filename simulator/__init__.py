"""The Houyi simulator: a real HTTP server speaking our ``go2hyapi`` wire protocol over a simulated fleet.

``simulator.fleet`` holds the fleet and its rules (and documents the fleet file), ``simulator.server`` the
HTTP server, its admin API and ``start_simulator`` for tests, ``simulator.faults`` the injectable faults;
``python -m simulator`` runs it, ``python -m simulator.generate_fleet`` regenerates the demo fleet.
"""
