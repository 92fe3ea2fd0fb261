"""Struct layouts and map definitions read from a BPF object's BTF (its .BTF section).

The classifier's C header is the one place its map layouts are written; clang records
them in BTF (`-g`), and this reader turns them into `Layout`s that pack and unpack map
keys and values by field name. So the daemon never mirrors a struct by hand: a field
moved in the header moves here too, a field the daemon needs but the object lacks is
a `KeyError` naming it. Only what map layouts use is understood: integers (with
`__be16`/`__be32` typedefs meaning network order), arrays, nested structs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BTF_MAGIC = 0xEB9F
# kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19
_QUALIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}
# bytes that follow the 12-byte type record: fixed, or per vlen entry
_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_NETWORK_ORDER = {"__be16", "__be32", "__be64"}


class BtfError(ValueError):
    """The object has no usable BTF, or not the struct/map asked for."""


@dataclass(frozen=True)
class Field:
    offset: int                      # bytes from the start of the struct
    size: int                        # bytes of one element
    count: int = 1                   # array length (0: not an array)
    network_order: bool = False      # a __be16/__be32 integer
    layout: Layout | None = None     # element struct, for struct members


@dataclass(frozen=True)
class Layout:
    """A C struct: `pack({...})` fills named fields (zero elsewhere), `unpack` reads all."""

    name: str
    size: int
    byteorder: str                   # the object's: "little" (bpfel) or "big" (bpfeb)
    fields: dict[str, Field] = field(default_factory=dict)

    def pack(self, values: dict[str, Any]) -> bytes:
        buf = bytearray(self.size)
        self._pack_into(buf, 0, values)
        return bytes(buf)

    def _pack_into(self, buf: bytearray, base: int, values: dict[str, Any]) -> None:
        for name, value in values.items():
            f = self.fields.get(name)
            if f is None:
                raise KeyError(f"struct {self.name} has no field {name!r}")
            at = base + f.offset
            if isinstance(value, bytes):  # raw bytes of the whole member (addresses)
                if len(value) != f.size * max(f.count, 1):
                    raise ValueError(f"{self.name}.{name}: {len(value)} bytes, "
                                     f"want {f.size * max(f.count, 1)}")
                buf[at:at + len(value)] = value
                continue
            items = value if f.count else [value]
            if len(items) > max(f.count, 1):
                raise ValueError(f"{self.name}.{name}: {len(items)} items, at most {f.count}")
            for i, item in enumerate(items):
                if f.layout is not None:
                    f.layout._pack_into(buf, at + i * f.size, item)
                else:
                    order = "big" if f.network_order else self.byteorder
                    buf[at + i * f.size:at + (i + 1) * f.size] = item.to_bytes(f.size, order)

    def unpack(self, raw: bytes, base: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, f in self.fields.items():
            items = []
            for i in range(max(f.count, 1)):
                at = base + f.offset + i * f.size
                if f.layout is not None:
                    items.append(f.layout.unpack(raw, at))
                else:
                    order = "big" if f.network_order else self.byteorder
                    items.append(int.from_bytes(raw[at:at + f.size], order))
            out[name] = items if f.count else items[0]
        return out


@dataclass(frozen=True)
class MapDef:
    """A BTF-defined map (`struct {...} name SEC(".maps")`)."""

    name: str
    type: int
    max_entries: int
    key: Layout | int     # a struct's layout, or the size of a plain integer key
    value: Layout | int


def elf_section(data: bytes, wanted: str) -> tuple[bytes, str]:
    """(contents, byte order) of a section of a 64-bit ELF file (BPF objects are ELF64)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise BtfError("not a 64-bit ELF object")
    order = "little" if data[5] == 1 else "big"
    e = "<" if order == "little" else ">"
    shoff, = struct.unpack_from(e + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _, _, _, off, size = struct.unpack_from(e + "IIQQQQ", data, shoff + i * shentsize)
        return name, off, size
    _, stroff, _ = header(shstrndx)
    for i in range(shnum):
        name, off, size = header(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end].decode() == wanted:
            return data[off:off + size], order
    raise BtfError(f"no {wanted} section (build with clang -g)")


class Btf:
    """The types of one object's .BTF section."""

    def __init__(self, btf: bytes, byteorder: str) -> None:
        e = "<" if byteorder == "little" else ">"
        magic, _, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from(
            e + "HBBIIIII", btf)
        if magic != BTF_MAGIC:
            raise BtfError("bad BTF magic")
        self.byteorder = byteorder
        self._e = e
        self._strings = btf[hdr_len + str_off:]
        # per type id (0 is void): name, kind, vlen, size or type id, offset of its extra data
        self._types: list[tuple[str, int, int, int, int]] = [("", 0, 0, 0, 0)]
        self._bitfields: set[int] = set()  # structs whose member offsets carry bit sizes
        self._data = btf
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from(e + "III", btf, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind == STRUCT and info >> 31:
                self._bitfields.add(len(self._types))
            self._types.append((self._str(name_off), kind, vlen, size_or_type, pos + 12))
            pos += 12 + _EXTRA.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        self._layouts: dict[int, Layout] = {}

    @classmethod
    def from_object(cls, path: Path) -> Btf:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BtfError(f"{path}: {exc.strerror}") from None
        return cls(*elf_section(data, ".BTF"))

    def _str(self, off: int) -> str:
        return self._strings[off:self._strings.index(b"\0", off)].decode()

    def _resolve(self, tid: int) -> tuple[int, bool]:
        """Strip typedefs and qualifiers; True if a __be typedef was on the way."""
        network = False
        while self._types[tid][1] in _QUALIFIERS:
            network |= self._types[tid][0] in _NETWORK_ORDER
            tid = self._types[tid][3]
        return tid, network

    def _size(self, tid: int) -> int:
        tid, _ = self._resolve(tid)
        _, kind, _, size, extra = self._types[tid]
        if kind == ARRAY:
            elem, _, n = struct.unpack_from(self._e + "III", self._data, extra)
            return self._size(elem) * n
        if kind == PTR:
            return 8
        return size

    def _layout(self, tid: int) -> Layout:
        if tid in self._layouts:
            return self._layouts[tid]
        name, kind, vlen, size, extra = self._types[tid]
        if kind != STRUCT:
            raise BtfError(f"type {name or tid} is not a struct")
        fields = {}
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from(self._e + "III", self._data, extra + 12 * i)
            if tid in self._bitfields and m_off >> 24:
                raise BtfError(f"struct {name}: bitfields are not supported")
            fields[self._str(m_name)] = self._field(m_type, (m_off & 0xFFFFFF) // 8)
        layout = Layout(name, size, self.byteorder, fields)
        self._layouts[tid] = layout
        return layout

    def _field(self, tid: int, offset: int) -> Field:
        tid, network = self._resolve(tid)
        kind, extra = self._types[tid][1], self._types[tid][4]
        count = 0
        if kind == ARRAY:
            elem, _, count = struct.unpack_from(self._e + "III", self._data, extra)
            tid, network = self._resolve(elem)
            kind = self._types[tid][1]
        layout = self._layout(tid) if kind == STRUCT else None
        return Field(offset, self._size(tid), count, network, layout)

    def struct(self, name: str) -> Layout:
        for tid, (t_name, kind, *_rest) in enumerate(self._types):
            if kind == STRUCT and t_name == name:
                return self._layout(tid)
        raise BtfError(f"struct {name} not in the object's BTF")

    def maps(self) -> dict[str, MapDef]:
        """Every map in the .maps section: `__uint(x, N)` is `int (*x)[N]`, `__type(x, T)`
        is `T *x`."""
        out = {}
        for name, kind, vlen, _, extra in self._types:
            if kind != DATASEC or name != ".maps":
                continue
            for i in range(vlen):
                var, _, _ = struct.unpack_from(self._e + "III", self._data, extra + 12 * i)
                v_name, _, _, v_type, _ = self._types[var]
                out[v_name] = self._map_def(v_name, self._resolve(v_type)[0])
        return out

    def _map_def(self, name: str, tid: int) -> MapDef:
        members = {}
        _, _, vlen, _, extra = self._types[tid]
        for i in range(vlen):
            m_name, m_type, _ = struct.unpack_from(self._e + "III", self._data, extra + 12 * i)
            pointee = self._types[self._resolve(m_type)[0]][3]  # PTR -> its target
            members[self._str(m_name)] = pointee

        def number(member: str) -> int:  # int (*x)[N]: the array's length
            _, _, _, _, arr = self._types[self._resolve(members[member])[0]]
            return struct.unpack_from(self._e + "III", self._data, arr)[2]

        def typ(member: str) -> Layout | int:
            tid, _ = self._resolve(members[member])
            return self._layout(tid) if self._types[tid][1] == STRUCT else self._size(tid)
        return MapDef(name, number("type"), number("max_entries"), typ("key"), typ("value"))
