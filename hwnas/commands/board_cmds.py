"""`hwnas board setup | start`: the emulated 64-bit Arm board (qemu-user) for users without a board."""

from __future__ import annotations

import argparse
import signal
import threading

from hwnas.commands.output import add_json_flag, emit, log

TARGET_TEMPLATE = """# Written by `hwnas board start`: the emulated aarch64 board it serves on 127.0.0.1:{port}.
description = "emulated aarch64 board (qemu-user) on 127.0.0.1:{port}"

[tvm]
kind = "llvm"
mtriple = "aarch64-linux-gnu"
mcpu = "cortex-a72"
mattr = ["+neon"]
threads = {threads}

[connection]
kind = "rpc"
host = "127.0.0.1"
port = {port}
emulated = true
timeout_s = 30

[export]
cc = "aarch64-linux-gnu-gcc"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("board", help="an emulated 64-bit Arm board (qemu-user) served over TVM RPC")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("setup", help="build the board's arm64 root and TVM wheels in the cache (once)")
    add_json_flag(q)
    q.set_defaults(func=cmd_setup)
    q = actions.add_parser("start", help="serve the board until interrupted; writes a user target for it")
    q.add_argument("--name", default="board", help="name of the user target written for it (default board)")
    q.add_argument("--threads", type=int, default=1, help="runtime threads on the board (default 1)")
    add_json_flag(q)
    q.set_defaults(func=cmd_start)


def cmd_setup(args: argparse.Namespace) -> None:
    from hwnas.targets.board import prepare

    parts = prepare()
    emit(args, {"directory": str(parts.directory)}, f"emulated Arm board ready in {parts.directory}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_start(args: argparse.Namespace) -> None:
    from hwnas.files import atomic_write_text
    from hwnas.targets.board import EmulatedBoard
    from hwnas.targets.target import load_target, user_targets_dir

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the board as Ctrl-C does
    with EmulatedBoard(threads=args.threads) as board:
        path = atomic_write_text(
            user_targets_dir() / f"{args.name}.toml", TARGET_TEMPLATE.format(port=board.port, threads=args.threads)
        )
        load_target(args.name)  # the file just written is a valid target
        data = {"target": args.name, "port": board.port, "target_file": str(path)}
        emit(args, data, f"emulated Arm board on 127.0.0.1:{board.port}: use --target {args.name} ({path})")
        log("serving until interrupted (Ctrl-C)")
        while board.alive:
            threading.Event().wait(1.0)
    log("the emulated board stopped")
