#!/bin/bash
set -euo pipefail
cat > /app/greeting.py <<'PY'
def greet(name: str) -> str:
    return f"Hello, {name}!"
PY
