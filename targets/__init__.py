"""Targets, sessions on their devices, the measurement store and profiling (``hwnas.targets``).

Modules, one job each:

- ``target``: target descriptions (TOML files, built-in and the user's own) -> a validated ``Target``.
- ``session``: a device for a target, this machine or a board over TVM RPC, and how it is timed.
- ``store``: one SQLite file of measurements per target, the keys of its rows, nothing measured twice.
- ``configs``: the distinct layer kernel configurations a search space produces, and samples.
- ``driver``: measures what the store lacks through pluggable measure functions, resumably.
- ``plan``: what a profile covers and running it (``hwnas profile``, the pipeline).
- ``tvm_measures``: the TVM-backed measure functions (layer kernels; whole networks via the compiler).
- ``network_timings``: whole-subnet latencies, looked up in the store or measured once.
"""
