#!/bin/sh
# Trainer container: every command is an `hvt` subcommand (default: verify-venv).
set -eu
if [ ! -x /opt/venv/bin/hvt ]; then
  echo "trainer: /opt/venv/bin/hvt is missing; rebuild the image (make image)" >&2
  exit 70
fi
exec /opt/venv/bin/hvt "$@"
