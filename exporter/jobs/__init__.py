"""Export jobs: the queue and its leases, events, wake-ups, the worker, and result files."""
