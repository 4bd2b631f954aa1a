"""sandbox: the sandbox hosts from the operator's side (`hvt sandbox`): the oracle on every host.

May import config, run (the task index) and the leaves, and verl_patch/harbor_patch: it runs
Harbor trials the way the agent loop does. Imported by the command line and smoke.
"""
