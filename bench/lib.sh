# Shared by the bench scripts (sourced).

# The wall time of a command in ms (one decimal), its output discarded, read from bash's own clock
# ($EPOCHREALTIME, any decimal point stripped): reading it with `date` put a fork and exec of `date`
# (1-3 ms here) into every figure. Returns the command's exit status.
elapsed_ms() {
  local s e rc
  s=${EPOCHREALTIME//[!0-9]/}; "$@" >/dev/null 2>&1; rc=$?; e=${EPOCHREALTIME//[!0-9]/}
  printf '%d.%d\n' $(( (e - s) / 1000 )) $(( (e - s) % 1000 / 100 ))
  return $rc
}

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# Unmounts everything mounted under a directory, deepest first: container rootfs left by a failed
# run, and the tmpfs Berth mounts on its run directory when that is on disk.
unmount_under() {
  awk -v dir="$1/" 'index($2, dir) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
}
