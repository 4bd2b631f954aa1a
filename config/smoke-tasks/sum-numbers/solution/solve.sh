#!/bin/bash
set -euo pipefail
python3 -c 'print(sum(int(x) for x in open("/app/numbers.txt") if x.strip()))' > /app/answer.txt
