"""sandbox: the sandbox hosts from the operator's side (`hvt sandbox`): task images warmed on
every host, the oracle on every host, and the preflight's check that the images are there.

May import config, preflight (its check type; the command line registers the image check into
it), run (the task index) and the leaves, and verl_patch/harbor_patch: it runs Harbor trials
the way the agent loop does. Imported by the command line and smoke.
"""
