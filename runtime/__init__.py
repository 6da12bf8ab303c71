"""Process plumbing shared by the worker, the intake and the dev stack: configuration, logging, clients."""
