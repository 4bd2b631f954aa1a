"""trajectory: the LiteLLM callback that appends one JSONL record per proxied call to its trial
(LiteLLM loads hvt.trajectory.logger.proxy_handler_instance; verl_patch reads the records).

May import: config and the leaves (hvt.ownership, hvt.docker_remote).
"""
