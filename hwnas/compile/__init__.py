"""Compilation of binary networks to TVM: targets, bit packing and XNOR/popcount conv kernels.

Modules, one job each:

- ``tvm_targets``: the CPU features a kernel asks of a TVM target, and the runtime thread count
  (targets themselves are the TOML files of :mod:`hwnas.targets.target`).
- ``binconv``: the bit layout, the padding rule and the binary conv2d compute and schedules.
- ``bitpack``: the activation packing kernel and NumPy reference packers.
- ``runner``: build, run, time and export a kernel standalone.
- ``reference``: the folded network in PyTorch, op for op as the kernels compute it; a compiled
  network equals it bit for bit on every CPU (``deploy.verify``, ``docs/verification.md``).
"""
