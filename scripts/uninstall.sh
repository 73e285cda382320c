#!/usr/bin/env bash
# Removes the binance-recorder service: stops and disables it, removes the
# binary and the unit. Never touches recorded data (/var/lib/binance-recorder)
# nor the config (/etc/binance-recorder); the system user stays, since it
# owns the data. Safe to run again. DESTDIR=<dir> works on a staging tree
# (see scripts/install.sh).
set -euo pipefail

DESTDIR=${DESTDIR:-}
if [ -z "$DESTDIR" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "run as root (sudo bash scripts/uninstall.sh), or set DESTDIR" >&2
        exit 1
    fi
    systemctl disable --now binance-recorder.service 2>/dev/null || true
fi
rm -f "$DESTDIR/etc/systemd/system/binance-recorder.service" \
    "$DESTDIR/usr/local/bin/binance-recorder"
if [ -z "$DESTDIR" ]; then
    systemctl daemon-reload
fi
echo "removed the binary and the unit; kept $DESTDIR/etc/binance-recorder and $DESTDIR/var/lib/binance-recorder"
