"""images: what the images are built from and proof of what they hold: the base images, the
Debian and Python locks and whether their pins are still served, the venv against the locks
(`hvt images`, `hvt pins`, `hvt verify-venv`).

May import: config and the leaves (hvt.ownership, hvt.docker_remote).
"""
