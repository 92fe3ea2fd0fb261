"""The SDK-less .ipk packages (package/build-ipk.sh), the feed Makefile and the rpcd ACL.

The packages are built once per session into a tmp dir from a fresh `make -C bpf` and
opened with tarfile, as opkg would: outer tar.gz -> debian-binary, data, control.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from voipqos import api
from voipqos.lab import netns

ROOT = Path(__file__).resolve().parents[1]
EPOCH = 1700000000
SITE = "./usr/lib/python3.11/site-packages/"

_spec = importlib.util.spec_from_file_location("ipkg_control", ROOT / "package/ipkg_control.py")
ipkg_control = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ipkg_control)


def build(out: Path, bpf: Path, **env: str) -> None:
    subprocess.run([str(ROOT / "package/build-ipk.sh"), str(out)], check=True, timeout=120,
                   env={**os.environ, "BPF_DIR": str(bpf), "SOURCE_DATE_EPOCH": str(EPOCH),
                        **env})


@pytest.fixture(scope="module")
def bpf_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpf")
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={out}"], check=True,
                   timeout=300)
    return out


@pytest.fixture(scope="module")
def ipks(tmp_path_factory, bpf_dir) -> Path:
    out = tmp_path_factory.mktemp("ipk")
    build(out, bpf_dir)
    return out


def _untar(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None)
                for m in tar.getmembers()}


class Ipk:
    """One .ipk opened the way opkg reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outer = _untar(path.read_bytes())
        self.parts = {name: blob for name, (_, blob) in self.outer.items()}
        self.control = _untar(self.parts["./control.tar.gz"])
        self.data = _untar(self.parts["./data.tar.gz"])
        self.files = {name: m for name, (m, _) in self.data.items()}

    def control_file(self, name: str) -> str:
        return self.control["./" + name][1].decode()

    def fields(self) -> dict[str, str]:
        text = self.control_file("control")
        head, _, desc = text.partition("Description:")
        fields = dict(line.split(": ", 1) for line in head.splitlines())
        fields["Description"] = desc.strip()
        return fields

    def read(self, name: str) -> bytes:
        return self.data[name][1]


@pytest.fixture(scope="module")
def voipqos(ipks) -> Ipk:
    return Ipk(ipks / f"voipqos_{ipkg_control.version(ROOT)}_all.ipk")


@pytest.fixture(scope="module")
def luci(ipks) -> Ipk:
    return Ipk(ipks / f"luci-app-voipqos_{ipkg_control.version(ROOT)}_all.ipk")


def test_outer_archive_is_ipkg_build_format(voipqos, luci):
    for ipk in (voipqos, luci):
        assert ipk.path.read_bytes()[:2] == b"\x1f\x8b"  # gzip, not an ar archive
        assert list(ipk.outer) == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
        assert ipk.parts["./debian-binary"] == b"2.0\n"
        for archive in (ipk.outer, ipk.control, ipk.data):
            assert {(m.uid, m.gid, m.mtime) for m, _ in archive.values()} == {(0, 0, EPOCH)}


def test_control_fields(voipqos):
    f = voipqos.fields()
    assert list(f) == ["Package", "Version", "Depends", "Source", "SourceName", "License",
                       "Section", "SourceDateEpoch", "Maintainer", "Architecture",
                       "Installed-Size", "Description"]
    assert f["Package"] == "voipqos"
    assert f["Version"] == ipkg_control.version(ROOT)
    depends = f["Depends"].split(", ")
    assert depends[0] == "libc"
    assert set(ipkg_control.pydeps(ROOT)) | {
        "python3-light", "kmod-sched-core", "kmod-sched-bpf", "kmod-ifb", "tc-bpf",
        "ip-tiny",  # the classifier loader reads `ip -j link` (busybox ip has no -j)
        "rpcd-mod-ucode", "ucode-mod-ubus",  # the public ubus object: an rpcd ucode plugin
        "kmod-nf-conntrack-netlink",  # the default conntrack_source reads only candidates
    } == set(depends[1:])
    assert (f["Source"], f["SourceName"]) == ("package/voipqos", "voipqos")
    assert (f["License"], f["Section"], f["Architecture"]) == ("GPL-2.0-only", "net", "all")
    assert f["SourceDateEpoch"] == str(EPOCH)
    assert "<" in f["Maintainer"] and f["Maintainer"].endswith(">")
    size = len(gzip.decompress(voipqos.parts["./data.tar.gz"]))
    assert f["Installed-Size"] == str(size)
    assert "VoIP" in f["Description"]


def test_conffiles_and_maintainer_scripts(voipqos, tmp_path):
    assert voipqos.control_file("conffiles") == "/etc/config/voipqos\n"
    scripts = {name[2:]: m for name, (m, _) in voipqos.control.items() if m.isfile()}
    assert {"postinst", "prerm", "postinst-pkg"} <= set(scripts)
    for name in ("postinst", "prerm", "postinst-pkg"):
        assert scripts[name].mode == 0o755
        script = tmp_path / name
        script.write_text(voipqos.control_file(name))
        subprocess.run(["sh", "-n", str(script)], check=True)
    assert "default_postinst $0 $@" in voipqos.control_file("postinst")
    assert "default_prerm $0 $@" in voipqos.control_file("prerm")


def test_maintainer_scripts_in_an_image_build(voipqos, tmp_path):
    """With IPKG_INSTROOT set (image builder), the scripts hand over to the image's
    /lib/functions.sh and touch nothing on the build host."""
    instroot = tmp_path / "root"
    (instroot / "lib").mkdir(parents=True)
    (instroot / "lib/functions.sh").write_text(
        'default_postinst() { echo "postinst $*" >>"$IPKG_INSTROOT/calls"; }\n'
        'default_prerm() { echo "prerm $*" >>"$IPKG_INSTROOT/calls"; }\n')
    env = {"PATH": os.environ["PATH"], "IPKG_INSTROOT": str(instroot)}
    for name in ("postinst", "prerm", "postinst-pkg"):
        script = tmp_path / f"voipqos.{name}"
        script.write_text(voipqos.control_file(name))
        subprocess.run(["sh", str(script), "install"], env=env, check=True)
    assert (instroot / "calls").read_text() == (
        f"postinst {tmp_path}/voipqos.postinst install\n"
        f"prerm {tmp_path}/voipqos.prerm install\n")


def test_data_tree_modes(voipqos):
    modes = {name: m.mode for name, m in voipqos.files.items() if m.isfile()}
    assert modes["./usr/bin/voipqos"] == 0o755
    assert modes["./etc/init.d/voipqos"] == 0o755
    assert modes["./etc/uci-defaults/90-voipqos"] == 0o755
    assert modes["./etc/config/voipqos"] == 0o600
    assert modes["./usr/share/rpcd/acl.d/voipqos.json"] == 0o644
    assert all(m.mode == 0o755 for m in voipqos.files.values() if m.isdir())
    shipped = [p.relative_to(ROOT / "files").as_posix() for p in (ROOT / "files").rglob("*")
               if p.is_file()]
    assert {"etc/init.d/voipqos", "etc/config/voipqos", "etc/uci-defaults/90-voipqos",
            "usr/share/rpcd/acl.d/voipqos.json"} <= set(shipped)
    for name in shipped:  # all of files/, as it is (rpcd's ACL and plugins included)
        assert voipqos.read("./" + name) == (ROOT / "files" / name).read_bytes(), name
        if name.startswith("usr/share/rpcd/"):
            assert modes["./" + name] == 0o644, name


def test_every_python_module_and_both_bpf_objects_inside(voipqos, bpf_dir):
    shipped = {SITE + p.relative_to(ROOT / "src").as_posix()
               for p in ipkg_control.shipped_modules(ROOT)}
    assert SITE + "voipqos/cli.py" in shipped
    assert shipped == {n for n in voipqos.files if n.startswith(SITE) and n.endswith(".py")}
    for obj in ("voipqos-bpfel.o", "voipqos-bpfeb.o"):
        assert voipqos.read(f"./usr/lib/voipqos/bpf/{obj}") == (bpf_dir / obj).read_bytes()
    launcher = voipqos.read("./usr/bin/voipqos").decode()
    assert launcher.startswith("#!/usr/bin/python3\n")
    assert "from voipqos.cli import main" in launcher


def test_nothing_from_tests_or_lab(voipqos):
    names = list(voipqos.files)
    assert not [n for n in names if "/lab/" in n or "/tests/" in n or "__pycache__" in n
                or n.endswith(".pyc")]
    assert {n.split("/")[1] for n in names if n != "."} == {"etc", "usr"}


def test_luci_package_mirrors_the_luci_tree(luci):
    f = luci.fields()
    assert (f["Package"], f["Section"], f["Architecture"]) == ("luci-app-voipqos", "luci", "all")
    assert "voipqos" in f["Depends"].split(", ")
    want = {"./www/" + p.relative_to(ROOT / "luci-app/htdocs").as_posix()
            for p in (ROOT / "luci-app/htdocs").rglob("*") if p.is_file()}
    want |= {"./" + p.relative_to(ROOT / "luci-app/root").as_posix()
             for p in (ROOT / "luci-app/root").rglob("*") if p.is_file()}
    assert want == {n for n, m in luci.files.items() if m.isfile()}
    assert "killall -HUP rpcd" in luci.control_file("postinst-pkg")


def test_luci_builder_is_generic_and_keeps_exec_bits(tmp_path, bpf_dir):
    app = tmp_path / "app"
    (app / "htdocs/luci-static/resources/view").mkdir(parents=True)
    (app / "htdocs/luci-static/resources/view/x.js").write_text("'use strict';\n")
    (app / "root/etc/uci-defaults").mkdir(parents=True)
    (app / "root/etc/uci-defaults/80-x").write_text("#!/bin/sh\nexit 0\n")
    (app / "root/etc/uci-defaults/80-x").chmod(0o700)
    build(tmp_path / "out", bpf_dir, LUCI_APP_DIR=str(app))
    ipk = Ipk(tmp_path / "out" / f"luci-app-voipqos_{ipkg_control.version(ROOT)}_all.ipk")
    files = {n: m.mode for n, m in ipk.files.items() if m.isfile()}
    assert files == {"./www/luci-static/resources/view/x.js": 0o644,
                     "./etc/uci-defaults/80-x": 0o755}
    assert ipk.fields()["Depends"] == "libc"  # no Makefile: nothing declared


def test_build_is_reproducible(tmp_path, ipks, bpf_dir):
    build(tmp_path, bpf_dir)
    for ipk in ipks.glob("*.ipk"):
        assert (tmp_path / ipk.name).read_bytes() == ipk.read_bytes(), ipk.name


def test_feed_makefile_declares_what_the_code_imports():
    mk = ipkg_control.Makefile((ROOT / "package/voipqos/Makefile").read_text())
    pkg = mk.block_vars("Package/voipqos")
    deps = ipkg_control.depends(pkg["DEPENDS"], mk.vars)
    python = {d for d in deps if d.startswith("python3-")} - {"python3-light"}
    assert python == set(ipkg_control.pydeps(ROOT)), "DEPENDS out of date with the imports"
    assert {"python3-light", "kmod-sched-core", "kmod-sched-bpf", "kmod-ifb", "tc-bpf"} <= set(deps)
    # python3-email only where the packages feed still has it (24.10; later in urllib)
    assert "$(PYTHON3_EMAIL)" in pkg["DEPENDS"] and "python3-package-email.mk" in \
        mk.vars["PYTHON3_EMAIL"]
    assert "$(BPF_DEPENDS)" in pkg["DEPENDS"]
    assert mk.vars["PKG_LICENSE"] == "GPL-2.0-only"
    # the license text ships in the build dir, where PKG_LICENSE_FILES names it
    assert mk.vars["PKG_LICENSE_FILES"] == "LICENSE" and (ROOT / "LICENSE").is_file()
    assert "$(VOIPQOS_TREE)/LICENSE $(PKG_BUILD_DIR)/" in mk.defines["Build/Prepare"]
    assert mk.defines["Package/voipqos/conffiles"].strip() == "/etc/config/voipqos"
    # bpf.mk's CompileBPF for the target, unchanged, and the object named by its byte
    # order; so the package is per target, not PKGARCH:=all
    assert "PKGARCH" not in pkg
    assert mk.defines["Build/Compile"].count("$(call CompileBPF,") == 1
    assert "BPF_ARCH" not in mk.vars and "BPF_TARGET" not in mk.vars
    assert "voipqos-$(BPF_TARGET).o" in mk.defines["Py3Package/voipqos/install"]


def test_luci_makefile_works_through_a_feed_link():
    """make follows the link a feed makes, so $(CURDIR) is luci-app/ itself: luci.mk
    must come by an absolute path and the name must not come from the directory."""
    mk = ipkg_control.Makefile((ROOT / "luci-app/Makefile").read_text())
    assert "include $(TOPDIR)/feeds/luci/luci.mk" in (ROOT / "luci-app/Makefile").read_text()
    assert mk.vars["PKG_NAME"] == mk.vars["LUCI_NAME"] == "luci-app-voipqos"
    assert "$(CURDIR)/../pyproject.toml" in mk.vars["PKG_VERSION"]
    link = ROOT / "package/luci-app-voipqos"
    assert link.is_symlink() and link.resolve() == (ROOT / "luci-app").resolve()
    assert {"luci-base", "voipqos"} <= set(ipkg_control.depends(mk.vars["LUCI_DEPENDS"]))


@pytest.mark.parametrize(("code", "need"), [
    ("import http.client\n", {"python3-email"}),  # http.client imports email
    ("import pathlib\n", {"python3-urllib"}),  # pathlib imports urllib.parse (3.11)
    ("import logging.handlers\n", {"python3-logging"}),
    ("def f():\n    import ctypes\n", {"python3-ctypes"}),  # a lazy import counts too
    ("import shutil, hmac, secrets\n", set()),  # lzma, _hashlib: optional, not needed
    ("from pyroute2 import IPRoute\n", {"python3-pyroute2"}),
])
def test_pydeps_follows_what_the_standard_library_imports(tmp_path, code, need):
    pkg = tmp_path / "src/voipqos"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(code)
    got = set(ipkg_control.pydeps(tmp_path))
    # http.client also needs urllib (urllib.parse), as pathlib does
    assert need <= got and got - need <= {"python3-urllib"}, got


def test_conntrack_netlink_kmod_is_named_where_users_look():
    from voipqos import probe
    from voipqos.plan import Features

    mk = ipkg_control.Makefile((ROOT / "package/voipqos/Makefile").read_text())
    assert "kmod-nf-conntrack-netlink" in mk.defines["Package/voipqos/description"]
    assert "kmod-nf-conntrack-netlink" in probe.format_report(probe.report(Features()))
    assert "kmod-nf-conntrack-netlink" in (ROOT / "docs/install.md").read_text()


def test_rpcd_acl_grants_read_and_write_separately():
    acl = json.loads((ROOT / "files/usr/share/rpcd/acl.d/voipqos.json").read_text())
    group = acl[api.OBJECT]
    assert group["read"] == {"ubus": {api.OBJECT: api.READ_METHODS}}
    assert group["write"] == {"ubus": {api.OBJECT: api.WRITE_METHODS}}
    assert set(api.READ_METHODS) | set(api.WRITE_METHODS) == set(api.SPECS)


def compile_bpf(obj: Path, arch: str) -> Path:
    """tests/compile_bpf.sh: bpf.mk's CompileBPF steps for BPF_ARCH `arch`."""
    subprocess.run([str(ROOT / "tests/compile_bpf.sh"), str(ROOT / "bpf/voipqos.c"), str(obj),
                    arch], check=True, timeout=120)
    return obj


@pytest.mark.kernel
def test_compile_bpf_gives_each_target_its_object(tmp_path, bpf_dir):
    """The SDK build: CompileBPF for each of bpf.mk's front-ends gives the right byte
    order and keeps the maps' BTF; the one for this machine's kind of target (64-bit
    little-endian: mips64el, as for aarch64 and x86_64 routers) passes the verifier when
    tc attaches it, and so does make bpf's bpfel object that `make ipk` ships. (A 32-bit
    front-end's BTF has 4-byte pointers, which only a 32-bit kernel takes: this one
    refuses mipsel's, "Member exceeds struct_size", and the classifier's spin lock needs
    that BTF. Hence per-target SDK packages, and `-target bpf` objects for `all`.)"""
    objs = {arch: compile_bpf(tmp_path / f"{arch}.o", arch)
            for arch in ("mips", "mipsel", "mips64", "mips64el")}
    for arch, obj in objs.items():
        head = obj.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[5] == (1 if arch.endswith("el") else 2), arch
        assert int.from_bytes(head[18:20], "little" if head[5] == 1 else "big") == 247  # EM_BPF
        sections = subprocess.run(["llvm-objdump", "-h", str(obj)], capture_output=True,
                                  text=True, check=True).stdout
        assert all(f" {s} " in sections for s in ("tc", "tc_l3", ".maps", ".BTF")), arch
    pins = tmp_path / "bpffs"
    pins.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(pins)], check=True)
    try:
        with netns.Topology(f"vqpk{os.getpid() % 100000}-") as t:
            t.add("r")
            t.exec("r", "ip link add d0 type veth peer name d1")
            t.exec("r", "tc qdisc add dev d0 clsact")
            for pref, obj in enumerate((objs["mips64el"], bpf_dir / "voipqos-bpfel.o"), 1):
                res = subprocess.run(
                    ["ip", "netns", "exec", t.ns("r"), "tc", "filter", "add", "dev", "d0",
                     "egress", "pref", str(pref), "bpf", "da", "obj", str(obj), "sec", "tc"],
                    capture_output=True, text=True, env={**os.environ, "TC_BPF_MNT": str(pins)})
                assert res.returncode == 0, (obj.name, res.stderr[-2000:])
            assert t.exec("r", "tc filter show dev d0 egress").stdout.count("jited") == 2
    finally:
        subprocess.run(["umount", str(pins)], check=False)
