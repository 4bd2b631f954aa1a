#!/bin/sh
# Agent runtime image: it exists to be mounted (as a volume) at
# /opt/custom-agent-runtime/claude-code in task containers. Run on its own it checks the tree
# and prints the versions it carries.
set -eu
root=/opt/custom-agent-runtime/claude-code
"$root/bin/node" --version >/dev/null
printf 'claude-code %s, node %s, at %s\n' \
  "$("$root/bin/claude" --version | cut -d' ' -f1)" "$("$root/bin/node" --version)" "$root"
