#!/bin/bash
# Reward 1 when /app/answer.txt holds the sum (189), else 0.
if [ "$(tr -d '[:space:]' < /app/answer.txt 2>/dev/null)" = "189" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
