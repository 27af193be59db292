"""The soak and fault-injection scenario: several probes, a server, Redis and an aggregator worker in
network namespaces, counted traffic, faults at random times from a seed, and a check that every packet
sent is either in Parquet or lost to an injected fault that can lose it.

Modules: ``plan`` (the seeded schedule), ``lab`` (namespaces, mounts, processes), ``traffic`` (the
counted traffic generator, run as a script inside a namespace), ``faults`` (the injector and its event
log), ``verify`` (what landed, what reached Parquet, which losses each fault explains), ``runner``
(the whole run and its JSON report; ``python -m e2e.soak`` with ``tests`` on the path).
"""
