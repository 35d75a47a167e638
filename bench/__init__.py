"""Benchmarks: every performance claim of the README as a figure measured in one run
against the peer a user would otherwise pick. Each is ``python -m bench.<name>``
(``--quick`` for a smoke-sized run); each prints a table and writes
``bench/results/<name>.json`` with the machine's facts (see ``bench.common``).

- ``bench.search``: the payload's search vs ``GridSearchCV`` (loky, and serial).
- ``bench.memory``: memory the split data adds on E engines: memmap vs push.
- ``bench.overhead``: payload cost per task vs a raw ``LoadBalancedView.apply``.
- ``bench.bootstrap``: ``up`` on N = 1..8 simulated nodes, phase by phase.
- ``bench.putdata``: put-data to 1..8 simulated hosts; a re-run moves nothing.
"""
