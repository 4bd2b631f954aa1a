"""Waits for a marker that nothing ever writes (the bug: it should not wait at all)."""

import pathlib
import time

while not pathlib.Path("/tmp/check-ready").exists():
    time.sleep(1)
print("ready")
