"""Run a command (default: `bash .ci/run`) beside a bounded CPU burner, and time it.

CI machines are shared and noisy: a suite that passes only on a quiet machine blocks every
landing. This starts N busy processes (default 2, one per core here) for the length of the
run, never longer than --max-seconds, stops them when the command ends (also on Ctrl-C), and
prints the command's exit code and wall time. It is a script, not a test.

  python3 scripts/ci_under_load.py                       # CI=true bash .ci/run, 2 burners
  python3 scripts/ci_under_load.py --burners 2 -- make test
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time


def burn(deadline: float) -> None:
    """Keep one core busy until the deadline (a bound even if the parent dies)."""
    x = 0
    while time.monotonic() < deadline:
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burners", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument("--max-seconds", type=float, default=5400, help="burner bound (90 min)")
    parser.add_argument("command", nargs="*", default=["bash", ".ci/run"])
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    burners = [
        multiprocessing.Process(target=burn, args=(deadline,), daemon=True)
        for _ in range(args.burners)
    ]
    for proc in burners:
        proc.start()
    print(f"[under-load] {args.burners} burner(s) started (bound {args.max_seconds:.0f} s): "
          f"{' '.join(args.command)}", flush=True)  # fmt: skip
    started = time.monotonic()
    env = {**os.environ, "CI": os.environ.get("CI", "true")}
    child = subprocess.Popen(args.command, env=env)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        code = child.wait()
    finally:
        for proc in burners:
            proc.terminate()
        for proc in burners:
            proc.join(10)
    alive = sum(p.is_alive() for p in burners)
    print(f"[under-load] exit {code} after {time.monotonic() - started:.0f} s; "
          f"burners stopped ({alive} still alive)", flush=True)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
