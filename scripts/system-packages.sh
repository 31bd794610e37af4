#!/usr/bin/env bash
# Install the Debian packages mailish needs, only when they are missing.
# usage: scripts/system-packages.sh run|test
#   run:  PostgreSQL server binaries (the embedded database of `mailish up`) and Dovecot
#         (the demo mailbox of `make up`)
#   test: the above plus isync (mbsync, the benchmark peer), openssl, redis-server (the shared
#         token cache) and libpython3.11-testsuite (a MIME corpus)
set -euo pipefail

need=()
have_pg() { ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; }
have_pg || need+=(postgresql)
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
if [ "${1:-run}" = test ]; then
  command -v mbsync >/dev/null 2>&1 || need+=(isync)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # CPython's own email test messages: one of the hostile-MIME corpora
  [ -d /usr/lib/python3.11/test/test_email/data ] || need+=(libpython3.11-testsuite)
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing system packages: ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "missing system packages (${need[*]}); install them with: apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages try to start their services; none is wanted here (tests run their own).
for svc in dovecot postgresql redis-server; do
  "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
done
