#!/usr/bin/env bash
# System packages the e2e tier uses, installed where we can (as root, from Debian): a real one-node Slurm with munge
# (tests/e2e/test_slurm.py, see ../shared/notes/slurm-local.md) and headless Chromium (tests/e2e/test_browser.py).
# Not root or no apt: says so, and those tests skip with their reason. Idempotent; called by launch/test.sh.
set -uo pipefail
want=()
command -v slurmctld >/dev/null || want+=(slurm-wlm munge)
command -v chromium >/dev/null || want+=(chromium)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system_deps: not root or no apt-get: ${want[*]} not installed; the Slurm / browser tests will skip" >&2
  exit 0
fi
echo "system_deps: apt-get install ${want[*]}" >&2
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null \
  || echo "system_deps: apt-get install ${want[*]} failed; the tests that need them will skip" >&2
exit 0
