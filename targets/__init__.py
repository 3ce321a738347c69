"""Targets, sessions on their devices, the measurement store and profiling.

Modules, one job each:

- ``target``: target descriptions (TOML files, built-in and the user's own) -> a validated ``Target``.
- ``session``: a device for a target, this machine or a board over TVM RPC (server or tracker).
- ``store``: one SQLite file of measurements per target, resumable, nothing measured twice.
- ``configs``: the distinct layer kernel configurations a search space produces, and samples.
- ``profile``: the driver that measures what the store lacks through pluggable measure functions.
- ``measure_tvm``: the TVM-backed measure functions (layer kernels; whole networks via the compiler).
"""
