#!/bin/bash
set -euo pipefail
printf 'print("ready")\n' > /app/check.py
