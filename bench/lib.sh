# Shared by the bench scripts (sourced).

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# Unmounts everything mounted under a directory, deepest first: container rootfs left by a failed
# run, and the tmpfs Berth mounts on its run directory when that is on disk.
unmount_under() {
  awk -v dir="$1/" 'index($2, dir) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
}
