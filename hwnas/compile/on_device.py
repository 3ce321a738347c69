"""A compiled network's library on its target's device: loaded here for a local target, uploaded
and loaded over TVM RPC through a session for a remote or emulated one (``hwnas compile --verify
--bench``). Running it gives logits; comparing them is :func:`hwnas.compile.deploy.verify`'s job,
the same for every device."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwnas.compile.deploy import CompiledNet
from hwnas.targets.session import open_session
from hwnas.targets.target import Target


@contextmanager
def net_on_device(target: Target, library: Path) -> Iterator[CompiledNet]:
    """The exported ``library`` (linked for ``target``) running on the target's device for the
    length of the block; a remote device that stops answering raises DeviceLost (one line)."""
    if target.connection.kind == "local":
        yield CompiledNet.load(library)
        return
    with open_session(target) as session, session.device_calls():
        net = CompiledNet(session.load_library(library), session.device)
        try:
            yield net
        finally:
            net.vm = None  # the VM holds the RPC session (and a tracker's device) open: free it with the block
