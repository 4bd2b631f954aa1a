#!/bin/bash
# Reward 1 when greet("Ada") == "Hello, Ada!", else 0.
if python3 -c 'import sys; sys.path.insert(0, "/app"); from greeting import greet; assert greet("Ada") == "Hello, Ada!"' 2>/dev/null; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
