# Source this in a task container to use the mounted agent runtime:
#   . /opt/custom-agent-runtime/claude-code/runtime-env.sh && claude --version
CLAUDE_CODE_RUNTIME_ROOT=/opt/custom-agent-runtime/claude-code
PATH="$CLAUDE_CODE_RUNTIME_ROOT/bin:$PATH"
# the sandbox has no route to Anthropic: no telemetry, no auto-update, no error reporting
DISABLE_AUTOUPDATER=1
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
export CLAUDE_CODE_RUNTIME_ROOT PATH DISABLE_AUTOUPDATER CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC
