"""The bpf(2) system call through ctypes: pinned objects, map elements, test runs.

Generic (nothing here knows the classifier): the daemon updates the classifier's maps in
microseconds where a `bpftool` subprocess costs a millisecond (bench/bpf_classifier.py),
and needs neither libbpf nor bpftool on the router. ctypes is a separate OpenWrt package
(python3-ctypes), which the package's DEPENDS names. Errors are OSError with the errno.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# bpf(2) syscall numbers. MIPS differs per ABI (o32 / n64); the rest per architecture.
_NR_BPF = {
    "x86_64": 321, "i386": 357, "i686": 357, "aarch64": 280, "arm": 386,
    "mips": 4355, "mips64": 5315, "riscv64": 280, "loongarch64": 280,
    "ppc": 361, "ppc64": 361, "ppc64le": 361, "s390x": 351,
}
(MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY, PROG_LOAD, OBJ_GET,
 PROG_TEST_RUN, PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, MAP_LOOKUP_BATCH) = (
    1, 2, 3, 4, 5, 7, 10, 13, 15, 24)
NOEXIST = 1  # BPF_NOEXIST: update only if the key is new
# struct __sk_buff (UAPI, stable): the fields a tc test run reads back or feeds in
SKB_PRIORITY_OFFSET = 32
SKB_INGRESS_IFINDEX_OFFSET = 36
LOOPBACK_IFINDEX = 1   # a test run's skb->dev when the context names none
SKB_GSO_SEGS_OFFSET = 164
SK_BUFF_SIZE = 192   # kernel 5.16+; older kernels copy less


class UnknownArch(OSError):
    """No bpf(2) syscall number for this CPU."""


def syscall_nr(machine: str, pointer_size: int) -> int:
    """bpf(2)'s number for `uname -m` and the userland's pointer size (MIPS o32/n64)."""
    if machine.startswith("arm") and machine != "arm64":
        machine = "arm"
    elif machine.startswith("mips"):
        machine = "mips64" if pointer_size == 8 else "mips"
    elif machine == "x86_64" and pointer_size == 4:
        machine = "i386"
    try:
        return _NR_BPF[machine]
    except KeyError:
        raise UnknownArch(f"bpf() syscall number unknown for {machine}") from None


_libc: ctypes.CDLL | None = None
_nr = 0


def _call(cmd: int, attr: bytes) -> tuple[int, int, bytes]:
    """(result, errno, attr as the kernel left it): some commands report through attr
    even when they fail (a batch read's count at its end)."""
    global _libc, _nr
    if _libc is None:
        _nr = syscall_nr(os.uname().machine, struct.calcsize("P"))
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(_nr, ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    return ret, ctypes.get_errno() if ret < 0 else 0, buf.raw


def bpf(cmd: int, attr: bytes) -> tuple[int, bytes]:
    """bpf(cmd, attr): returns (result, attr as the kernel left it); OSError on failure."""
    ret, err, out = _call(cmd, attr)
    if ret < 0:
        raise OSError(err, os.strerror(err))
    return ret, out


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def obj_get(path: str | Path) -> int:
    """fd of a pinned BPF object."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(OBJ_GET, struct.pack("=QII", _addr(p), 0, 0))[0]


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> MapInfo:
    """The kernel's definition of a map (the head of struct bpf_map_info)."""
    info = ctypes.create_string_buffer(64)
    bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, len(info), _addr(info)))
    typ, _, key, value, entries, flags = struct.unpack_from("=6I", info.raw)
    return MapInfo(typ, key, value, entries, flags)


def prog_fd_by_id(prog_id: int) -> int:
    return bpf(PROG_GET_FD_BY_ID, struct.pack("=III", prog_id, 0, 0))[0]


def _map_op(cmd: int, fd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    bpf(cmd, struct.pack("=IIQQQ", fd, 0, _addr(k), _addr(value), flags))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value (per-CPU maps: one slot per possible CPU, each rounded up to 8 bytes)."""
    value = ctypes.create_string_buffer(value_size)
    try:
        _map_op(MAP_LOOKUP_ELEM, fd, key, value)
    except FileNotFoundError:
        return None
    return value.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    _map_op(MAP_UPDATE_ELEM, fd, key, ctypes.create_string_buffer(value, len(value)), flags)


def map_delete(fd: int, key: bytes) -> None:
    _map_op(MAP_DELETE_ELEM, fd, key, None)


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash map (GET_NEXT_KEY from no key = the first)."""
    nxt = ctypes.create_string_buffer(key_size)
    cur: ctypes.Array | None = None
    while True:
        try:
            bpf(MAP_GET_NEXT_KEY, struct.pack("=IIQQ", fd, 0, _addr(cur), _addr(nxt)))
        except FileNotFoundError:
            return
        yield nxt.raw
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def map_items(fd: int, key_size: int, value_size: int,
              max_entries: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map in one BPF_MAP_LOOKUP_BATCH call (kernel 5.6+)."""
    keys = ctypes.create_string_buffer(key_size * max_entries)
    values = ctypes.create_string_buffer(value_size * max_entries)
    out_batch = ctypes.create_string_buffer(max(key_size, 8))
    attr = struct.pack("=QQQQIIQQ", 0, _addr(out_batch), _addr(keys), _addr(values),
                       max_entries, fd, 0, 0)
    ret, err, after = _call(MAP_LOOKUP_BATCH, attr)
    if ret < 0 and err != errno.ENOENT:  # ENOENT: read to the end, count is still set
        raise OSError(err, os.strerror(err))
    count = struct.unpack_from("=I", after, 32)[0]
    # .raw copies the whole buffer: once, not per entry
    k, v = keys.raw[:key_size * count], values.raw[:value_size * count]
    return [(k[i * key_size:(i + 1) * key_size], v[i * value_size:(i + 1) * value_size])
            for i in range(count)]


@dataclass(frozen=True)
class RunResult:
    retval: int
    data: bytes       # the packet as the program left it
    priority: int     # skb->priority after the run
    duration_ns: int  # mean per repetition


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, gso_segs: int = 0,
                  ingress: bool = False) -> RunResult:
    """Run a tc program on one Ethernet frame with BPF_PROG_TEST_RUN; `gso_segs` makes
    the skb look like a GSO aggregate of that many segments, `ingress` like a packet
    received on its device (skb->ingress_ifindex == skb->ifindex)."""
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    ctx = ctypes.create_string_buffer(SK_BUFF_SIZE)
    struct.pack_into("=I", ctx, SKB_GSO_SEGS_OFFSET, gso_segs)
    if ingress:
        struct.pack_into("=I", ctx, SKB_INGRESS_IFINDEX_OFFSET, LOOPBACK_IFINDEX)
    attr = struct.pack("=IIIIQQIIIIQQIII", prog_fd, 0, len(data), len(dout), _addr(din),
                       _addr(dout), repeat, 0, SK_BUFF_SIZE, SK_BUFF_SIZE, _addr(ctx),
                       _addr(ctx), 0, 0, 0)
    _, out = bpf(PROG_TEST_RUN, attr)
    _, retval, _, size_out, _, _, _, duration = struct.unpack_from("=IIIIQQII", out)
    priority = struct.unpack_from("=I", ctx.raw, SKB_PRIORITY_OFFSET)[0]
    return RunResult(ctypes.c_int32(retval).value, dout.raw[:size_out], priority, duration)


def cpu_count(cpu_list: str) -> int:
    """CPUs in a kernel CPU list such as "0-3,6"."""
    n = 0
    for part in cpu_list.strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def possible_cpus() -> int:
    """Per-CPU map values hold one slot for each possible CPU."""
    return cpu_count(Path("/sys/devices/system/cpu/possible").read_text())
