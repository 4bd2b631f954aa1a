#!/bin/sh
# Build-time only: run a command trusting the CA bundle passed as the BuildKit secret
# `build_ca` (mounted at /run/secrets/build_ca for that one RUN step, never stored in a layer).
# Without the secret the command runs with the image's own trust store.
set -eu
ca=/run/secrets/build_ca
if [ -s "$ca" ]; then
  export SSL_CERT_FILE="$ca" PIP_CERT="$ca" REQUESTS_CA_BUNDLE="$ca" \
         NODE_EXTRA_CA_CERTS="$ca" npm_config_cafile="$ca"
fi
exec "$@"
