#!/bin/sh
# Writes a busybox root filesystem tarball made from Debian's busybox-static to $1.
# Usage: scripts/busybox-rootfs.sh out.tar
set -eu
out=${1:?usage: busybox-rootfs.sh OUT.tar}
busybox=/bin/busybox
[ -x "$busybox" ] || busybox=/usr/bin/busybox
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || [ -n "${BERTH_ALLOW_DYNAMIC_BUSYBOX:-}" ] || {
  echo "need a static busybox (apt-get install busybox-static)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# dev, proc and sys are in every distribution's image (mount points): without them each container
# start would create them in its upper layer.
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/var/www" "$dir/home" "$dir/dev" "$dir/proc" "$dir/sys"
chmod 1777 "$dir/tmp"
cp "$busybox" "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list); do
  [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nwww-data:x:33:\nstaff:x:50:www-data\nnogroup:x:65534:\n' > "$dir/etc/group"
tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$out" .
