"""Compilation of binary networks to TVM: targets, bit packing and XNOR/popcount conv kernels.

Modules, one job each:

- ``tvm_targets``: TVM target dicts for the supported targets and the runtime thread count.
- ``binconv``: the bit layout, the padding rule and the binary conv2d compute and schedules.
- ``bitpack``: the activation packing kernel and NumPy reference packers.
- ``runner``: build, run, time and export a kernel standalone.
"""
