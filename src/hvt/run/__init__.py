"""run: `hvt launch` and what a run leaves: Ray, the verl command, run records, health, clean,
metrics, wandb sync, the task index.

May import: config, preflight, proxy, repos and the leaves. Never smoke.
"""
