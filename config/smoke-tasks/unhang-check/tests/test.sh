#!/bin/bash
# Reward 1 when `python3 /app/check.py` prints "ready" within 150 s, else 0. An unfixed check
# hangs for the whole 150 s (a hung test suite): the slow trials of the smoke.
if [ "$(timeout 150 python3 /app/check.py 2>/dev/null)" = "ready" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
