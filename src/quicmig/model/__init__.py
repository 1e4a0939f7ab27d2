"""The scenario model: topology, impairments, timeline and workload, as plain data.

Every backend (simulator, proxy, namespace lab) consumes the same objects.
"""
