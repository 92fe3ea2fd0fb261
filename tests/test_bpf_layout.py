"""The classifier's map layouts (read from the objects' BTF) and argument checks,
without a kernel: the objects are built with clang from bpf/voipqos.c and voipqos.h."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipqos import bpf, bpf_syscall, btf, classifier_maps
from voipqos.header_evidence import HeaderCounts

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bpf"

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@pytest.fixture(scope="module")
def maps() -> classifier_maps.ClassifierMaps:
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={OUT}"], check=True)
    return classifier_maps.for_object(OUT / "voipqos-bpfel.o")


@pytest.fixture(scope="module")
def maps_be(maps) -> classifier_maps.ClassifierMaps:
    return classifier_maps.for_object(OUT / "voipqos-bpfeb.o")


def test_ipv4_flow_key_is_v4_mapped_network_order(maps) -> None:
    key = maps.flow_key((17, "192.0.2.1", "198.51.100.2", 40000, 5004))
    assert len(key) == 40
    assert key[:16] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert key[16:32] == bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 2])
    assert key[32:] == struct.pack("!HHB3x", 40000, 5004, 17)


@given(st.sampled_from([6, 17]), st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), ports, ports)
def test_flow_keys_are_distinct_per_tuple_and_direction(maps, proto, addrs, sport,
                                                        dport) -> None:
    fwd = maps.flow_key((proto, addrs[0], addrs[1], sport, dport))
    rev = maps.flow_key((proto, addrs[1], addrs[0], dport, sport))
    assert len(fwd) == 40
    assert (fwd == rev) == (addrs[0] == addrs[1] and sport == dport)


@pytest.mark.parametrize("flow", [
    (17, "192.0.2.300", "192.0.2.1", 1, 2), (17, "x", "::1", 1, 2),
    (17, "::1", "::2", 70000, 1), (300, "::1", "::2", 1, 2),
])
def test_bad_flows_name_the_flow(maps, flow) -> None:
    with pytest.raises(classifier_maps.LayoutError, match="bad flow"):
        maps.flow_key(flow)


def test_config_layout(maps) -> None:
    raw = maps.config_value(0x00010010, True, False)
    assert len(raw) == 8  # sizeof(struct voipqos_config), as bpftool shows
    assert struct.unpack_from("=IBBxx", raw) == (0x00010010, 1, 0)


@pytest.mark.parametrize(("args", "field"), [
    ((0x00010000, True, False), "direct class"),
    ((1 << 32, True, False), "voice_classid"),
])
def test_bad_rules_are_refused(maps, args, field) -> None:
    with pytest.raises(classifier_maps.LayoutError, match=field):
        maps.config_value(*args)


@pytest.mark.parametrize(("ranges", "bad"), [([(20, 10)], "20-10"), ([(0, 10)], "0-10"),
                                             ([(1, 65536)], "1-65536")])
def test_bad_port_ranges_are_refused(ranges, bad) -> None:
    with pytest.raises(classifier_maps.LayoutError, match=f"bad range {bad}"):
        classifier_maps.ClassifierMaps.voice_ports(ranges)


def test_classid_zero_means_mark_only(maps) -> None:
    assert struct.unpack_from("=I", maps.config_value(0, True, False))[0] == 0


@given(st.sets(ports, max_size=40))
def test_port_set_bit_p_of_word_p_over_64(maps, chosen: set[int]) -> None:
    for m in (maps, classifier_maps.for_object(OUT / "voipqos-bpfeb.o")):
        raw = m.port_set("flows", chosen)
        order = m.ports_layout.byteorder
        assert len(raw) == 8192
        got = {64 * w + b for w in range(1024) for b in range(64)
               if int.from_bytes(raw[8 * w:8 * w + 8], order) >> b & 1} if chosen else set()
        assert got == chosen


def test_ports_value_replaces_one_bitmap_keeps_the_other(maps) -> None:
    voice = maps.port_set("voice", {5060})
    both = maps.ports_value(None, voice=voice, flows=maps.port_set("flows", {1, 2}))
    again = maps.ports_value(both, flows=maps.port_set("flows", {3}))
    assert maps.ports_value(again, voice=voice) == again
    assert again[maps.ports_layout.fields["voice"].offset:][:8192] == voice


def test_flow_ports_are_both_ports_of_every_key(maps) -> None:
    keys = [maps.flow_key((17, "192.0.2.1", "192.0.2.2", 40000, 5004)),
            maps.flow_key((6, "::1", "::2", 443, 50000))]
    assert maps.flow_ports(keys) == {40000, 5004, 443, 50000}


def test_big_endian_object_packs_host_fields_big_endian(maps, maps_be) -> None:
    raw = maps_be.config_value(0x00010010, True, False)
    assert struct.unpack_from(">IBB", raw) == (0x00010010, 1, 0)
    # network-order fields are big-endian in both objects
    flow = (17, "192.0.2.1", "::2", 1, 2)
    assert maps_be.flow_key(flow) == maps.flow_key(flow)


def test_layouts_come_from_the_header(maps) -> None:
    """Sizes and limits are the header's, not constants repeated in Python."""
    header = (ROOT / "bpf" / "voipqos.h").read_text()
    assert "#define VOIPQOS_PORT_WORDS\t(65536 / 64)" in header
    assert maps.ports_layout.fields["voice"].count == 1024
    assert f"#define VOIPQOS_MAX_FLOWS\t{maps.defs['voipqos_flows'].max_entries}" in header
    assert maps.flow_key_layout.size == 40 and maps.config_layout.size == 8
    assert set(maps.stats_layout.fields) == {"voice", "other"}


def test_stats_sum_over_cpus(maps) -> None:
    layout = maps.stats_layout
    slots = b"".join(layout.pack({"voice": {"packets": p, "bytes": 100 * p},
                                  "other": {"packets": 2 * p}}) for p in (1, 2, 3))
    assert maps.stats(slots, 3) == {"voice": {"packets": 6, "bytes": 600},
                                    "other": {"packets": 12, "bytes": 0}}


def test_map_memory(maps) -> None:
    mem = maps.memory(ncpu=4)
    assert mem["voipqos_stats"] == 4 + 4 * 32  # one entry, one value per CPU
    assert mem["voipqos_config"] == 4 + 8
    assert mem["voipqos_ports"] == 4 + 2 * 8192


def test_object_without_btf_is_refused(tmp_path: Path) -> None:
    stripped = tmp_path / "x.o"
    subprocess.run(["llvm-strip", "-g", "--remove-section=.BTF", str(OUT / "voipqos-bpfel.o"),
                    "-o", str(stripped)], check=True)
    with pytest.raises(btf.BtfError, match=r"no \.BTF section"):
        classifier_maps.for_object(stripped)


def test_unknown_field_is_named(maps) -> None:
    with pytest.raises(KeyError, match="flow_key has no field 'vlan'"):
        maps.flow_key_layout.pack({"vlan": 1})


@pytest.mark.parametrize(("machine", "ptr", "nr"), [
    ("x86_64", 8, 321), ("aarch64", 8, 280), ("armv7l", 4, 386), ("mips", 4, 4355),
    ("mips64", 8, 5315), ("riscv64", 8, 280), ("ppc", 4, 361), ("i686", 4, 357),
])
def test_syscall_numbers(machine: str, ptr: int, nr: int) -> None:
    assert bpf_syscall.syscall_nr(machine, ptr) == nr


def test_unknown_architecture() -> None:
    with pytest.raises(bpf_syscall.UnknownArch, match="unknown for sparc64"):
        bpf_syscall.syscall_nr("sparc64", 8)


@pytest.mark.parametrize(("text", "n"), [("0\n", 1), ("0-1\n", 2), ("0-3,6,8-9", 7)])
def test_cpu_count(text: str, n: int) -> None:
    assert bpf_syscall.cpu_count(text) == n


def test_find_object_prefers_env_and_knows_byte_order(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "voipqos-bpfeb.o").write_bytes(b"")
    monkeypatch.setenv("VOIPQOS_BPF_DIR", str(tmp_path))
    assert bpf.find_object("big") == tmp_path / "voipqos-bpfeb.o"


def test_find_object_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOIPQOS_BPF_DIR", str(tmp_path))
    monkeypatch.setattr(bpf, "OBJECT_DIRS", ())
    monkeypatch.setattr(bpf, "__file__", str(tmp_path / "src" / "voipqos" / "bpf.py"))
    with pytest.raises(bpf.BpfError, match=r"voipqos-bpfel\.o not found"):
        bpf.find_object("little")


def test_bad_hook_is_refused(tmp_path: Path) -> None:
    with pytest.raises(bpf.BpfError, match="hook 'root'"):
        bpf.Classifier(str(tmp_path)).attach("eth0", "root")


def test_netns_pin_dir_under_sys_is_refused() -> None:
    with pytest.raises(bpf.BpfError, match="under /sys"):
        bpf.Classifier("/sys/fs/bpf/voipqos", netns="x")


@pytest.mark.parametrize("addr", ["192.0.2.1", "2001:db8::7"])
def test_observer_key_and_counters_in_both_byte_orders(maps, maps_be, addr: str) -> None:
    """voipqos_seen: key in network order (IPv4 v4-mapped), counters read at the offsets
    the object's BTF gives, whatever the byte order."""
    for m in (maps, maps_be):
        key = m.seen_key((addr, 3478, 40000))
        assert key[:16] == classifier_maps._v6(addr) and key[16:] == struct.pack("!HH", 3478,
                                                                                 40000)
        value = m.seen_layout.pack({"dir": [{"rtp": 1, "stun": 3, "ssrc": [9, 9]},
                                            {"rtp": 2, "stun": 2**32 - 1, "seq": [5, 6]}]})
        assert m.seen_item(key, value) == ((addr, 3478, 40000),
                                           HeaderCounts(1, 2, 3, 2**32 - 1))
    with pytest.raises(classifier_maps.LayoutError, match="bad header key"):
        maps.seen_key(("192.0.2.1", 70000, 1))
