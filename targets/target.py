"""Targets: a TVM target plus the way to reach the device that runs it, read from small TOML files.

Built-in targets are the ``*.toml`` files beside this module (``local``, ``x86-avx2``, a generic
``aarch64``, the boards ``rpi4``, ``rpi5`` and ``cortex-a53``, and ``aarch64-qemu``, an emulated
board that a session starts itself, :mod:`hwnas.targets.board`). A user adds a device, or
re-points a built-in one at their own board, by writing ``<data dir>/targets/<name>.toml``; a user
file of the same name wins over the built-in one. The format, every key checked (an unknown or
ill-typed key is an error naming the file and the key)::

    description = "free text"              # optional
    [tvm]                                  # the LLVM target; "detect" asks LLVM about this host
    tag = "raspberry-pi/4b-aarch64"        # optional: a TVM target tag, or instead
    target = "llvm -mcpu=cortex-a72"       # optional: a target string (or its JSON dict form);
                                           # the keys below override what either gives
    kind = "llvm"                          # required without tag / target
    mtriple = "aarch64-linux-gnu"          # optional; "detect" for the host's
    mcpu = "cortex-a72"                    # optional; "detect" for the host's
    mattr = ["+neon"]                      # optional
    cores = 4                              # optional: the device's cores (TVM's num-cores)
    threads = 4                            # runtime threads on the device; 0 = every core
    [connection]
    kind = "local" | "rpc" | "tracker" | "emulated"   # emulated: hwnas starts a qemu board itself
    host = "192.168.1.20"                  # rpc: the rpc_server; tracker: the tracker
    port = 9090
    key = "rasp4"                          # tracker only: the device key
    emulated = false                       # optional: an rpc/tracker device that is emulated
    timeout_s = 10                         # optional: give up connecting (or waiting for a
                                           # tracker's device) after this long
    session_timeout_s = 0                  # optional: TVM's remote session timeout, 0 = none
    [export]                               # optional
    cc = "aarch64-linux-gnu-gcc"           # cross compiler linking the uploaded library

``cc`` is a program hwnas runs: only a command name or an absolute path to an executable is
accepted. A target file from someone else is code to review before use (docs/targets.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from hwnas.errors import HwnasError
from hwnas.paths import data_dir

if TYPE_CHECKING:
    import tvm

BUILTIN_DIR = Path(__file__).parent
DETECT = "detect"
CONNECTION_KINDS = ("local", "rpc", "tracker", "emulated")
TVM_KEYS = ("kind", "mtriple", "mcpu", "mattr", "num-cores")
"""What a target file's ``[tvm]`` table, tag or target string may set (the rest of a tag is TVM's defaults)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMAND = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
"""A plain command name (``gcc``, ``aarch64-linux-gnu-g++``, ``clang-18``): no path, no options."""


class TargetError(HwnasError):
    """A target file that is missing or malformed."""


@dataclass(frozen=True)
class Connection:
    """How to reach the device: this process, an RPC server, an RPC tracker and a device key, or an
    emulated board started for the session. ``emulated`` devices' timings are not a board's."""

    kind: str
    host: str = ""
    port: int = 0
    key: str = ""
    timeout_s: float = 10.0
    session_timeout_s: int = 0
    emulated: bool = False

    def __str__(self) -> str:
        if self.kind in ("local", "emulated"):
            return "local" if self.kind == "local" else "emulated aarch64 board (qemu)"
        where = f"{self.kind} {self.host}:{self.port}"
        where = f"{where} key {self.key}" if self.kind == "tracker" else where
        return f"{where} (emulated)" if self.emulated else where


@dataclass(frozen=True)
class Target:
    """A validated target. ``tvm`` is the TVM target dict with "detect" already resolved."""

    name: str
    description: str
    tvm: dict[str, Any]
    threads: int
    connection: Connection
    cc: str
    source: Path

    def tvm_target(self) -> tvm.target.Target:
        import tvm

        return tvm.target.Target(self.tvm)

    def fingerprint(self) -> str:
        """Canonical JSON of what makes measurements comparable: the TVM target, the threads, emulation."""
        what: dict[str, Any] = {"tvm": self.tvm, "threads": self.threads}
        if self.connection.emulated:  # an emulated device's rows never pass for a board's
            what["emulated"] = True
        return json.dumps(what, sort_keys=True, separators=(",", ":"))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tvm": self.tvm,
            "threads": self.threads,
            "connection": str(self.connection),
            "cc": self.cc,
            "source": str(self.source),
        }


def user_targets_dir() -> Path:
    return data_dir() / "targets"


def target_files() -> dict[str, Path]:
    """Every known target name and the file that defines it (user files override built-ins)."""
    files: dict[str, Path] = {}
    for directory in (BUILTIN_DIR, user_targets_dir()):
        if directory.is_dir():
            files.update({path.stem: path for path in sorted(directory.glob("*.toml"))})
    return dict(sorted(files.items()))


def load_target(name: str) -> Target:
    """The target called ``name``; a clear TargetError if it is unknown or its file is malformed."""
    files = target_files()
    if name not in files:
        raise TargetError(
            f"unknown target {name!r}; known: {', '.join(files)} (add one as {user_targets_dir() / name}.toml)"
        )
    return read_target(files[name])


def read_target(path: Path) -> Target:
    """Parse and validate one target file; the target's name is the file's stem."""
    if not _NAME.match(path.stem):
        raise TargetError(f"{path}: a target name uses letters, digits, '.', '_' and '-' only")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TargetError(f"{path}: not a text file (not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML ({exc})") from None
    return _Reader(path).target(data)


class _Reader:
    """Validation of one file's tables, every error naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> TargetError:
        return TargetError(f"{self.path}: {key}: {message}")

    def table(self, data: dict, key: str, allowed: set[str], required: bool) -> dict:
        if key not in data:
            if required:
                raise self.fail(f"[{key}]", "missing table")
            return {}
        if not isinstance(data[key], dict):
            raise self.fail(key, "must be a table")
        self.known(data[key], f"{key}.", allowed)
        return data[key]

    def known(self, table: dict, prefix: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"{prefix}{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def get(self, table: dict, where: str, key: str, kind: type, default: Any = None) -> Any:
        name = f"{where}.{key}" if where else key
        if key not in table:
            if default is None:
                raise self.fail(name, "missing")
            return default
        value = table[key]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(name, f"must be {_KIND_NAMES[kind]}, got {value!r}")
        return value

    def target(self, data: dict) -> Target:
        self.known(data, "", {"description", "tvm", "connection", "export"})
        description = self.get(data, "", "description", str, "")
        tvm_table = self.table(
            data, "tvm", {"tag", "target", "kind", "mtriple", "mcpu", "mattr", "cores", "threads"}, True
        )
        conn_table = self.table(
            data, "connection", {"kind", "host", "port", "key", "emulated", "timeout_s", "session_timeout_s"}, True
        )
        export = self.table(data, "export", {"cc"}, False)
        return Target(
            name=self.path.stem,
            description=description,
            tvm=self.tvm(tvm_table),
            threads=self.threads(tvm_table),
            connection=self.connection(conn_table),
            cc=self.cc(export),
            source=self.path,
        )

    def cc(self, table: dict) -> str:
        """The cross compiler, which hwnas runs: a command name looked up on PATH, or an absolute
        path to an executable; never a relative path (a file shipped beside the target file) or
        a command line with options."""
        cc = self.get(table, "export", "cc", str, "")
        if not cc or _COMMAND.match(cc):
            return cc
        path = Path(cc)
        if not path.is_absolute():
            raise self.fail("export.cc", f"must be a command name or an absolute path, got {cc!r}")
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise self.fail("export.cc", f"{cc} is not an executable file")
        return cc

    def tvm(self, table: dict) -> dict[str, Any]:
        out = self.base_target(table)
        if "kind" in table or not out:
            out["kind"] = self.get(table, "tvm", "kind", str)
        if out["kind"] != "llvm":
            raise self.fail("tvm.kind", f"only CPU targets are supported (kind = 'llvm'), got {out['kind']!r}")
        for key in ("mtriple", "mcpu"):
            if key in table:
                out[key] = _detect(key) if self.get(table, "tvm", key, str) == DETECT else table[key]
        if "mattr" in table:
            mattr = self.get(table, "tvm", "mattr", list)
            if not all(isinstance(a, str) and a[:1] in "+-" and len(a) > 1 for a in mattr):
                raise self.fail("tvm.mattr", f"must be a list of strings like '+neon' or '-avx512f', got {mattr!r}")
            out["mattr"] = mattr
        if "cores" in table:
            cores = self.get(table, "tvm", "cores", int)
            if cores < 1:
                raise self.fail("tvm.cores", f"must be a positive count, got {cores}")
            out["num-cores"] = cores
        return out

    def base_target(self, table: dict) -> dict[str, Any]:
        """What ``tag`` or ``target`` says (empty without them), kept to :data:`TVM_KEYS`."""
        if "tag" in table and "target" in table:
            raise self.fail("tvm.target", "give a tag or a target string, not both")
        key = "tag" if "tag" in table else "target" if "target" in table else ""
        if not key:
            return {}
        text = self.get(table, "tvm", key, str)
        try:
            spec = tvm_target_dict(text)
        except (ValueError, RuntimeError) as exc:  # TVM's errors for unknown tags and bad strings
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(f"tvm.{key}", f"TVM does not accept {text!r}: {first}") from None
        plain = {"mattr": lambda v: [str(a) for a in v], "num-cores": int}  # TVM's containers -> JSON's
        return {k: plain.get(k, str)(v) for k, v in spec.items() if k in TVM_KEYS}

    def threads(self, table: dict) -> int:
        threads = self.get(table, "tvm", "threads", int, 0)
        if threads < 0:
            raise self.fail("tvm.threads", f"must be 0 (every core) or a positive count, got {threads}")
        return threads

    def connection(self, table: dict) -> Connection:
        kind = self.get(table, "connection", "kind", str)
        if kind not in CONNECTION_KINDS:
            raise self.fail("connection.kind", f"must be one of {', '.join(CONNECTION_KINDS)}, got {kind!r}")
        timeout = self.get(table, "connection", "timeout_s", float, 10.0)
        session_timeout = self.get(table, "connection", "session_timeout_s", int, 0)
        if timeout <= 0 or session_timeout < 0:
            key = "timeout_s" if timeout <= 0 else "session_timeout_s"
            raise self.fail(f"connection.{key}", "must be positive" if timeout <= 0 else "must be 0 or more")
        if kind in ("local", "emulated"):
            extra = sorted(set(table) & {"host", "port", "key", "emulated"})
            if extra:
                raise self.fail(f"connection.{extra[0]}", f"a {kind} target has no address; remove it")
            return Connection(kind, timeout_s=timeout, session_timeout_s=session_timeout, emulated=kind == "emulated")
        host = self.get(table, "connection", "host", str)
        port = self.get(table, "connection", "port", int)
        if not 0 < port < 65536:
            raise self.fail("connection.port", f"must be between 1 and 65535, got {port}")
        key = self.get(table, "connection", "key", str) if kind == "tracker" else ""
        if kind == "rpc" and "key" in table:
            raise self.fail("connection.key", "a device key needs kind = 'tracker'")
        emulated = self.get(table, "connection", "emulated", bool, False)
        return Connection(kind, host, port, key, timeout, session_timeout, emulated)


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", bool: "true or false"}


def tvm_target_dict(text: str) -> dict[str, Any]:
    """A TVM target tag (``raspberry-pi/4b-aarch64``), target string (``llvm -mcpu=cortex-a72
    -mattr=+neon,+dotprod``) or JSON dict, as the dict TVM makes of it. TVM 0.27 parses tags and
    dicts only, so the string form is split here: the kind, then ``-key=value`` options, a
    comma-separated value a list (``mattr``, ``keys``), digits an integer."""
    import tvm

    text = text.strip()
    if text.startswith("{"):
        spec: Any = json.loads(text)
    elif " " in text or text in ("llvm", "c"):
        kind, *options = text.split()
        spec = {"kind": kind}
        for option in options:
            name, sep, value = option.lstrip("-").partition("=")
            if not option.startswith("-") or not sep:
                raise ValueError(f"option {option!r} is not -key=value")
            spec[name] = value.split(",") if name in ("mattr", "keys") else int(value) if value.isdigit() else value
    else:
        spec = text  # a tag
    return dict(tvm.target.Target(spec).export())


def _detect(key: str) -> str:
    """The host's LLVM triple or CPU name, as LLVM detects it (cpuid on x86)."""
    from tvm.target import codegen

    return codegen.llvm_get_system_triple() if key == "mtriple" else codegen.llvm_get_system_cpu()


def local_threads(target: Target) -> int:
    """Threads a session on this machine uses: the target's count, or every core when it says 0."""
    return target.threads or os.cpu_count() or 1
