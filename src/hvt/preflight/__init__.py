"""preflight: every check of the host, the sandbox backend and a run's inputs (`hvt dryrun`).

May import: config, repos (the trees it checks) and the leaves (hvt.ownership, hvt.docker_remote).
"""
