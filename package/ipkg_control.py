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
import re
import sys
import tomllib
from pathlib import Path

# OpenWrt splits these out of python3-light (the table of packages/lang/python/
# python3-find-stdlib-depends.sh); http.client/http.server import email.
STDLIB_PACKAGES = {
    "asyncio": "python3-asyncio", "cgi": "python3-cgi", "cgitb": "python3-cgitb",
    "unicodedata": "python3-codecs", "ctypes": "python3-ctypes", "dbm": "python3-dbm",
    "decimal": "python3-decimal", "distutils": "python3-distutils",
    "email": "python3-email", "http": "python3-email", "logging": "python3-logging",
    "lzma": "python3-lzma", "multiprocessing": "python3-multiprocessing",
    "curses": "python3-ncurses", "ssl": "python3-openssl", "doctest": "python3-pydoc",
    "pydoc": "python3-pydoc", "readline": "python3-readline", "sqlite3": "python3-sqlite3",
    "unittest": "python3-unittest", "urllib": "python3-urllib", "xml": "python3-xml",
    "xmlrpc": "python3-xml",
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


def depends(spec: str) -> list[str]:
    """`+a +b $(X) @SYM` -> ["a", "b"]: the selected packages, as opkg names them."""
    return [tok[1:] for tok in spec.split() if tok.startswith("+") and ":" not in tok]


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


def pydeps(root: Path) -> list[str]:
    """Feed packages for every split-out stdlib or third-party module the shipped code
    imports, wherever the import sits (lazy imports need the package just as much)."""
    found = set()
    for path in shipped_modules(root):
        if path.name in OPTIONAL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                pkg = STDLIB_PACKAGES.get(top) or FEED_PACKAGES.get(top)
                if pkg:
                    found.add(pkg)
    return sorted(found)


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
        ("Depends", ", ".join(["libc", *depends(pkg["DEPENDS"])])),
        ("Source", "package/voipqos"), ("SourceName", "voipqos"),
        ("License", mk.vars["PKG_LICENSE"]), ("Section", pkg["SECTION"]),
        ("SourceDateEpoch", epoch), ("Maintainer", mk.vars["PKG_MAINTAINER"]),
        ("Architecture", pkg["PKGARCH"]), ("Installed-Size", "0"),
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
