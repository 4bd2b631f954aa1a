#!/bin/sh
# LiteLLM proxy container: every command is an `hvt` subcommand (the proxy venv carries
# litellm[proxy] and harbor-verl-train for the trajectory logger callback).
set -eu
if [ ! -x /opt/venv/bin/hvt ]; then
  echo "proxy: /opt/venv/bin/hvt is missing; rebuild the image (make image)" >&2
  exit 70
fi
exec /opt/venv/bin/hvt "$@"
