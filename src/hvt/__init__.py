"""harbor-verl-train: the operator CLI and library of the Verl-SWE-RL deployment bundle.

One folder per part (docs/architecture.md): config, repos, images, trajectory, proxy,
preflight, run, smoke; the command line is cli.py and commands/. ownership.py and
docker_remote.py are leaves: they import nothing of ours.
"""

__version__ = "0.1.0"
