#!/usr/bin/env python3
"""CONTROL/ files for the SDK-less .ipk builds, read from the buildroot Makefiles.

package/voipqos/Makefile and luci-app/Makefile stay the one source of the package
metadata (depends, license, description, conffiles, maintainer scripts); this reads them
so `make ipk` and an SDK build cannot drift apart. It also lists the OpenWrt feed packages
the shipped Python code imports, which a test compares with the Makefile's DEPENDS.

  ipkg_control.py version ROOT                  -> 0.1.0-1 (PKG_VERSION-PKG_RELEASE)
  ipkg_control.py voipqos ROOT EPOCH DIR        -> DIR/control, conffiles, postinst, ...
  ipkg_control.py luci-app ROOT EPOCH DIR APP   -> the same for the LuCI tree APP
  ipkg_control.py pydeps ROOT                   -> feed packages the shipped code imports
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

# What OpenWrt 24.10 (Python 3.11) splits out of python3-light: each package's files
# under /usr/lib/python3.11/, from packages/lang/python/python3/files/python3-package-*.mk
# of the openwrt-24.10 branch (a directory, a module file, or an extension module in
# lib-dynload/ without its .so suffix). Everything else of the standard library is in
# python3-light. Later feeds merged python3-email into python3-urllib (Makefile).
STDLIB_FILES = {
    "python3-asyncio": ("asyncio",), "python3-cgi": ("cgi.py", "cgitb.py"),
    "python3-codecs": ("lib-dynload/_codecs_cn", "lib-dynload/_codecs_hk",
                       "lib-dynload/_codecs_iso2022", "lib-dynload/_codecs_jp",
                       "lib-dynload/_codecs_kr", "lib-dynload/_codecs_tw",
                       "lib-dynload/unicodedata"),
    "python3-ctypes": ("ctypes", "lib-dynload/_ctypes"),
    "python3-dbm": ("dbm", "lib-dynload/_dbm", "lib-dynload/_gdbm"),
    "python3-decimal": ("decimal.py", "lib-dynload/_decimal"),
    "python3-distutils": ("distutils",), "python3-email": ("email",),
    "python3-lib2to3": ("lib2to3",), "python3-logging": ("logging",),
    "python3-lzma": ("lzma.py", "lib-dynload/_lzma"),
    "python3-multiprocessing": ("multiprocessing", "lib-dynload/_multiprocessing"),
    "python3-ncurses": ("curses", "lib-dynload/_curses", "lib-dynload/_curses_panel"),
    "python3-openssl": ("lib-dynload/_hashlib", "lib-dynload/_ssl"),
    "python3-pydoc": ("doctest.py", "pydoc.py", "pydoc_data"),
    "python3-readline": ("lib-dynload/readline",),
    "python3-sqlite3": ("lib-dynload/_sqlite3", "sqlite3"),
    "python3-unittest": ("unittest",), "python3-urllib": ("urllib",),
    "python3-uuid": ("uuid.py", "lib-dynload/_uuid"), "python3-venv": ("ensurepip", "venv"),
    "python3-xml": ("xml", "xmlrpc", "lib-dynload/_elementtree", "lib-dynload/pyexpat"),
}
# third-party imports and the feed packages that provide them
FEED_PACKAGES = {"pyroute2": "python3-pyroute2", "psutil": "python3-psutil",
                 "ubus": "python3-ubus"}
NOT_SHIPPED = ("lab",)  # sub-packages of src/voipqos that stay in the source tree

# luci.mk's default postinst: drop LuCI's caches, make rpcd re-read menus and ACLs
LUCI_POSTINST = """#!/bin/sh
[ -n "${IPKG_INSTROOT}" ] || {
\trm -f /tmp/luci-indexcache.*
\trm -rf /tmp/luci-modulecache/
\tkillall -HUP rpcd 2>/dev/null
\texit 0
}
"""

# what package-pack.mk writes: the package's own scripts run from default_postinst and
# default_prerm (/lib/functions.sh) as <name>.postinst-pkg / <name>.prerm-pkg
POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
"""
PRERM = """#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
"""


class Makefile:
    """The `VAR:=value` assignments and `define NAME ... endef` blocks of a package
    Makefile, with make's `$$` turned back into `$` (no other expansion)."""

    def __init__(self, text: str) -> None:
        self.vars: dict[str, str] = {}
        self.defines: dict[str, str] = {}
        text = text.replace("\\\n", " ")
        lines = iter(text.splitlines())
        for line in lines:
            if line.startswith("define "):
                body = []
                for inner in lines:
                    if inner.strip() == "endef":
                        break
                    body.append(inner)
                self.defines[line[len("define "):].strip()] = "\n".join(body).replace("$$", "$")
                continue
            m = re.match(r"\s*([A-Za-z0-9_]+)\s*[:?+]?=\s*(.*)$", line)
            if m and not line.startswith("\t"):
                self.vars[m.group(1)] = m.group(2).strip()

    def block_vars(self, name: str) -> dict[str, str]:
        return Makefile(self.defines.get(name, "")).vars


def depends(spec: str, variables: dict[str, str] | None = None) -> list[str]:
    """`+a +b $(X) @SYM` -> ["a", "b", ...]: the selected packages, as opkg names them.
    A `$(VAR)` from `variables` is expanded, a `$(if COND,+x)` one as +x: the SDK-less
    build is for OpenWrt 24.10, whose feed has what such a condition looks for."""
    out = []
    for tok in spec.split():
        m = re.fullmatch(r"\$\((\w+)\)", tok)
        if m and variables and m.group(1) in variables:
            value = variables[m.group(1)]
            cond = re.fullmatch(r"\$\(if [^,]*\),(.*)\)", value)
            out += depends(cond.group(1) if cond else value, variables)
        elif tok.startswith("+") and ":" not in tok:
            out.append(tok[1:])
    return out


def version(root: Path) -> str:
    """PKG_VERSION-PKG_RELEASE, the `Version:` OpenWrt 24.10 writes for the package."""
    with open(root / "pyproject.toml", "rb") as f:
        pkg_version = tomllib.load(f)["project"]["version"]
    mk = Makefile((root / "package/voipqos/Makefile").read_text())
    return f"{pkg_version}-{mk.vars['PKG_RELEASE']}"


def shipped_modules(root: Path) -> list[Path]:
    pkg = root / "src/voipqos"
    return sorted(p for p in pkg.rglob("*.py")
                  if p.relative_to(pkg).parts[0] not in NOT_SHIPPED
                  and "__pycache__" not in p.parts)


# Shipped but not needed for the service: remote.py (`voipqos --router`, controlling
# another router over HTTPS) needs python3-openssl, which the router itself does not.
OPTIONAL_MODULES = {"remote.py"}


def _imports(root: Path) -> set[str]:
    """Absolute module names the shipped code imports, wherever the import sits (lazy
    imports need their package just as much)."""
    found = set()
    for path in shipped_modules(root):
        if path.name in OPTIONAL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module)
    return found


# Run in a fresh interpreter: import what the shipped code imports, as on a router where
# only some split-out packages are installed. argv[1]: third-party top-level modules,
# loaded as empty stand-ins (their feed packages bring what they need); argv[2]: JSON
# {stdlib path prefix: package} of the packages taken as absent; then the modules.
# Prints the package of a module that was needed but absent, or nothing.
_TRY_IMPORTS = """
import importlib, importlib.abc, importlib.machinery, json, os, sys, sysconfig, types

third, absent = sys.argv[1].split(","), json.loads(sys.argv[2])
stdlib = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
missing = {}

class Router(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in third:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if not (spec and spec.origin and os.path.isabs(spec.origin)):
            return None
        origin = os.path.realpath(spec.origin)
        for base in stdlib:
            rel = os.path.relpath(origin, base).split(".")[0]
            for prefix, pkg in absent.items():
                if rel == prefix or rel.startswith(prefix + "/"):
                    missing[name] = pkg
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__getattr__ = lambda attr: type(attr, (Exception,), {})
        return mod

    def exec_module(self, mod):
        pass

sys.meta_path.insert(0, Router())
# this script's own imports (importlib.abc -> pathlib -> urllib.parse) load afresh
for name, mod in list(sys.modules.items()):
    if vars(mod).get("__file__") and not name.startswith(("importlib", "encodings")):
        del sys.modules[name]
try:
    for name in sys.argv[3:]:
        importlib.import_module(name)
except ImportError as exc:
    print(missing.get(exc.name) or exc)
"""


def pydeps(root: Path, python: str = sys.executable) -> list[str]:
    """Feed packages for every third-party module and every split-out stdlib module the
    shipped code needs to import: its own imports (lazy ones too) and, transitively, what
    those import (http.client imports email and urllib.parse). Measured by importing
    them in `python` (3.11, as in OpenWrt 24.10) with the split-out packages absent,
    adding each one an import fails for; optional imports (ssl, lzma) stay absent."""
    names = _imports(root)
    found = {FEED_PACKAGES[n.split(".")[0]] for n in names if n.split(".")[0] in FEED_PACKAGES}
    shipped = sorted(".".join(p.relative_to(root / "src").with_suffix("").parts)
                     .removesuffix(".__init__") for p in shipped_modules(root)
                     if p.name not in OPTIONAL_MODULES)
    stdlib = sorted(n for n in names if n.split(".")[0] not in (*FEED_PACKAGES, "voipqos"))
    while True:
        absent = {prefix: pkg for pkg, prefixes in STDLIB_FILES.items() if pkg not in found
                  for prefix in prefixes}
        res = subprocess.run([python, "-c", _TRY_IMPORTS, ",".join(FEED_PACKAGES),
                              json.dumps(absent), *stdlib, *shipped], capture_output=True,
                             text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(root / "src")})
        need = res.stdout.strip()
        if not need:
            return sorted(found)
        if need not in STDLIB_FILES or need in found:
            raise RuntimeError(f"cannot import the shipped code: {need}")
        found.add(need)


def _description(text: str) -> str:
    # package-pack.mk: printf "Description: "; echo "$DESC" | sed 's,^[[:space:]]*, ,g'
    return "\n".join(" " + line.lstrip() for line in text.strip("\n").splitlines())


def _control(fields: list[tuple[str, str]], description: str) -> str:
    head = "".join(f"{k}: {v}\n" for k, v in fields if v)
    return f"{head}Description: {_description(description)}\n"


def voipqos_control(root: Path, epoch: str) -> dict[str, str]:
    mk = Makefile((root / "package/voipqos/Makefile").read_text())
    pkg = mk.block_vars("Package/voipqos")
    fields = [
        ("Package", "voipqos"), ("Version", version(root)),
        ("Depends", ", ".join(["libc", *depends(pkg["DEPENDS"], mk.vars)])),
        ("Source", "package/voipqos"), ("SourceName", "voipqos"),
        ("License", mk.vars["PKG_LICENSE"]), ("Section", pkg["SECTION"]),
        ("SourceDateEpoch", epoch), ("Maintainer", mk.vars["PKG_MAINTAINER"]),
        # the SDK builds one BPF object for its target; this package carries both byte
        # orders (the daemon loads the CPU's), so it fits every router
        ("Architecture", "all"), ("Installed-Size", "0"),
    ]
    return {
        "control": _control(fields, mk.defines["Package/voipqos/description"]),
        "conffiles": mk.defines["Package/voipqos/conffiles"].strip() + "\n",
        "postinst": POSTINST, "prerm": PRERM,
        "postinst-pkg": mk.defines["Package/voipqos/postinst"].strip() + "\n",
    }


def luci_control(root: Path, epoch: str, app: Path) -> dict[str, str]:
    """What luci.mk would write for the LuCI tree `app` (title, depends, license from its
    Makefile, if it has one)."""
    makefile = app / "Makefile"
    mk = Makefile(makefile.read_text() if makefile.exists() else "")
    title = mk.vars.get("LUCI_TITLE", "LuCI support for voipqos")
    fields = [
        ("Package", "luci-app-voipqos"), ("Version", version(root)),
        ("Depends", ", ".join(["libc", *depends(mk.vars.get("LUCI_DEPENDS", ""))])),
        ("Source", "luci-app"), ("SourceName", "luci-app-voipqos"),
        ("License", mk.vars.get("PKG_LICENSE", "")), ("Section", "luci"),
        ("SourceDateEpoch", epoch),
        ("Maintainer", mk.vars.get("PKG_MAINTAINER", "")),
        ("Architecture", mk.vars.get("LUCI_PKGARCH", "all")), ("Installed-Size", "0"),
    ]
    return {
        "control": _control(fields, mk.vars.get("LUCI_DESCRIPTION") or title),
        "postinst": POSTINST, "prerm": PRERM, "postinst-pkg": LUCI_POSTINST,
    }


def main(argv: list[str]) -> int:
    usage = ("usage: ipkg_control.py version|pydeps ROOT | voipqos ROOT EPOCH DIR"
             " | luci-app ROOT EPOCH DIR LUCI_DIR")
    if len(argv) < 2:
        print(usage, file=sys.stderr)
        return 2
    cmd, root = argv[0], Path(argv[1])
    if cmd == "version":
        print(version(root))
    elif cmd == "pydeps":
        print("\n".join(pydeps(root)))
    elif (cmd, len(argv)) in (("voipqos", 4), ("luci-app", 5)):
        out = Path(argv[3])
        if cmd == "voipqos":
            files = voipqos_control(root, argv[2])
        else:
            files = luci_control(root, argv[2], Path(argv[4]))
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            (out / name).chmod(0o755 if text.startswith("#!") else 0o644)
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
