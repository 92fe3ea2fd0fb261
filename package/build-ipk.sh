#!/bin/bash
# Build voipqos_<version>_all.ipk (and luci-app-voipqos_<version>_all.ipk from luci-app/)
# without the OpenWrt SDK, for `opkg install` on OpenWrt 24.10.
#
#   package/build-ipk.sh OUTDIR
#
# The archive is what OpenWrt's scripts/ipkg-build makes and opkg reads: a gzip'd tar (not
# an ar archive like Debian's .deb) of ./debian-binary, ./data.tar.gz, ./control.tar.gz.
# Files are owned by root, names sorted, mtimes SOURCE_DATE_EPOCH (default: the last
# commit), gzip without timestamps: the same tree gives the same bytes.
# Environment: BPF_DIR (default build/bpf, from `make bpf`: both byte orders, built for
# the BPF target itself, so the package fits every router, 32- or 64-bit; see
# docs/install.md), LUCI_APP_DIR (default luci-app), PYTHON_VERSION (default 3.11, the
# Python of OpenWrt 23.05 and 24.10).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
bpf_dir=$(realpath -m "${BPF_DIR:-$root/build/bpf}")
luci_dir=$(realpath -m "${LUCI_APP_DIR:-$root/luci-app}")
site=/usr/lib/python${PYTHON_VERSION:-3.11}/site-packages
meta="python3 $root/package/ipkg_control.py"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH
version=$($meta version "$root")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for obj in voipqos-bpfel.o voipqos-bpfeb.o; do
	[ -f "$bpf_dir/$obj" ] || { echo "build-ipk: $bpf_dir/$obj missing (run: make bpf)" >&2; exit 1; }
done

# tar flags of ipkg-build, plus explicit root ownership instead of fakeroot
tar_c() {
	tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name \
		--mtime="@$SOURCE_DATE_EPOCH" -cf - "$@"
}

# ipkg_build DIR: DIR/CONTROL/ and the data tree in DIR -> $out/<pkg>_<ver>_<arch>.ipk
ipkg_build() {
	local dir=$1 pkg arch tmp
	pkg=$(sed -n 's/^Package: //p' "$dir/CONTROL/control")
	arch=$(sed -n 's/^Architecture: //p' "$dir/CONTROL/control")
	tmp=$work/ipk.$pkg
	mkdir "$tmp"
	(cd "$dir" && tar_c --exclude=./CONTROL . | gzip -n -9 >"$tmp/data.tar.gz")
	sed -i "s/^Installed-Size: .*/Installed-Size: $(zcat "$tmp/data.tar.gz" | wc -c)/" \
		"$dir/CONTROL/control"
	(cd "$dir/CONTROL" && tar_c . | gzip -n -9 >"$tmp/control.tar.gz")
	echo "2.0" >"$tmp/debian-binary"
	(cd "$tmp" && tar_c ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -n -9 \
		>"$out/${pkg}_${version}_${arch}.ipk")
	echo "build-ipk: $out/${pkg}_${version}_${arch}.ipk"
}

# the same install rules as package/voipqos/Makefile, with Python sources instead of
# byte code (byte code is tied to one Python version; sources are not)
d=$work/voipqos
install -d -m 0755 "$d$site" "$d/usr/bin" "$d/etc/init.d" "$d/etc/config" \
	"$d/etc/uci-defaults" "$d/usr/share/rpcd" "$d/usr/lib/voipqos/bpf"
(cd "$root/src" && find voipqos -name '*.py' -not -path 'voipqos/lab/*' \
	-not -path '*/__pycache__/*' -print0) |
	while IFS= read -r -d '' py; do
		install -D -m 0644 "$root/src/$py" "$d$site/$py"
	done
install -m 0755 "$root/package/voipqos/files/voipqos" "$d/usr/bin/voipqos"
install -m 0755 "$root/files/etc/init.d/voipqos" "$d/etc/init.d/voipqos"
install -m 0600 "$root/files/etc/config/voipqos" "$d/etc/config/voipqos"
install -m 0755 "$root/files/etc/uci-defaults/90-voipqos" "$d/etc/uci-defaults/90-voipqos"
# rpcd's files: the ACL (acl.d/) and any rpcd plugin (ucode/), data only
cp -R "$root/files/usr/share/rpcd/." "$d/usr/share/rpcd/"
find "$d/usr/share/rpcd" -type d -exec chmod 0755 {} +
find "$d/usr/share/rpcd" -type f -exec chmod 0644 {} +
install -m 0644 "$bpf_dir/voipqos-bpfel.o" "$bpf_dir/voipqos-bpfeb.o" "$d/usr/lib/voipqos/bpf/"
$meta voipqos "$root" "$SOURCE_DATE_EPOCH" "$d/CONTROL"
ipkg_build "$d"

# luci.mk's layout: htdocs/ -> /www, root/ -> /; translations (po/) go to separate
# luci-i18n-* packages in a LuCI feed build and are not part of this one
if [ -d "$luci_dir/htdocs" ] || [ -d "$luci_dir/root" ]; then
	l=$work/luci-app-voipqos
	install -d -m 0755 "$l"
	[ -d "$luci_dir/htdocs" ] && install -d -m 0755 "$l/www" && cp -R "$luci_dir/htdocs/." "$l/www/"
	[ -d "$luci_dir/root" ] && cp -R "$luci_dir/root/." "$l/"
	# as in git: executables 0755, everything else 0644
	find "$l" -type d -exec chmod 0755 {} +
	find "$l" -type f -perm /111 -exec chmod 0755 {} +
	find "$l" -type f -not -perm /111 -exec chmod 0644 {} +
	$meta luci-app "$root" "$SOURCE_DATE_EPOCH" "$l/CONTROL" "$luci_dir"
	ipkg_build "$l"
else
	echo "build-ipk: no $luci_dir/htdocs or root/: luci-app-voipqos not built" >&2
fi
