"""The sans-IO core shared by every backend: endpoints, workloads, tracker, checks, results."""
