#!/usr/bin/env bash
# Installs binance-recorder as a systemd service (see docs/OPERATIONS.md,
# "Install"). Safe to run again: an upgrade rebuilds and replaces the binary
# and the unit, keeps the config and every recorded file, and restarts a
# running service (the WAL replays what it held).
#
#   sudo bash scripts/install.sh            # build, install, enable, start
#   sudo bash scripts/install.sh --no-start # install and enable only
#
# DESTDIR=<dir> installs into a staging tree instead of / and skips what
# needs a live system (user, systemctl); BINARY=<path> installs that binary
# instead of building one (both are used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

START=yes
for argument in "$@"; do
    case "$argument" in
        --no-start) START=no ;;
        *) echo "unknown argument $argument (known: --no-start)" >&2; exit 2 ;;
    esac
done

DESTDIR=${DESTDIR:-}
USER_NAME=binance-recorder
BIN_DIR="$DESTDIR/usr/local/bin"
UNIT_DIR="$DESTDIR/etc/systemd/system"
CONFIG_DIR="$DESTDIR/etc/binance-recorder"
STATE_DIR="$DESTDIR/var/lib/binance-recorder"
LIVE=yes
if [ -n "$DESTDIR" ]; then LIVE=no; fi

if [ "$LIVE" = yes ] && [ "$(id -u)" != 0 ]; then
    echo "run as root (sudo bash scripts/install.sh), or set DESTDIR to stage" >&2
    exit 1
fi

if [ -z "${BINARY:-}" ]; then
    echo "building the release binary"
    cargo build --release --locked --bin binance-recorder
    BINARY=target/release/binance-recorder
fi

if [ "$LIVE" = yes ] && ! id "$USER_NAME" >/dev/null 2>&1; then
    echo "creating system user $USER_NAME"
    useradd --system --home-dir /var/lib/binance-recorder --no-create-home \
        --shell /usr/sbin/nologin "$USER_NAME"
fi

install -d -m 0755 "$BIN_DIR" "$UNIT_DIR"
install -d -m 0750 "$CONFIG_DIR" "$STATE_DIR"
install -m 0755 "$BINARY" "$BIN_DIR/binance-recorder"
install -m 0644 systemd/binance-recorder.service "$UNIT_DIR/binance-recorder.service"
if [ -e "$CONFIG_DIR/config.toml" ]; then
    # An operator's config is never overwritten; the shipped one is left
    # beside it to compare after an upgrade.
    install -m 0640 config.toml "$CONFIG_DIR/config.toml.shipped"
    echo "kept $CONFIG_DIR/config.toml (the shipped one is config.toml.shipped)"
else
    install -m 0640 config.toml "$CONFIG_DIR/config.toml"
    echo "installed $CONFIG_DIR/config.toml"
fi
if [ "$LIVE" = yes ]; then
    chown root:"$USER_NAME" "$CONFIG_DIR" "$CONFIG_DIR"/config.toml*
    chown "$USER_NAME":"$USER_NAME" "$STATE_DIR"
fi

# A config the new binary refuses stops here, before the service restarts.
"$BIN_DIR/binance-recorder" check-config --config "$CONFIG_DIR/config.toml" >/dev/null

if [ "$LIVE" = yes ]; then
    systemctl daemon-reload
    systemctl enable binance-recorder.service
    if [ "$START" = yes ]; then
        systemctl restart binance-recorder.service
        echo "started: systemctl status binance-recorder; journalctl -u binance-recorder -f"
    fi
fi
echo "installed binance-recorder $("$BIN_DIR/binance-recorder" --version | awk '{print $2}')"
