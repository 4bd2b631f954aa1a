"""harbor-verl-train: the operator CLI and library of the Verl-SWE-RL deployment bundle."""

__version__ = "0.1.0"
