"""repos: the pinned harbor and verl source trees in repos/, built and checked (`hvt repos`).

May import: config and the leaves (hvt.ownership, hvt.docker_remote).
"""
