"""proxy: LiteLLM in front of verl's vLLM replicas: discovery, its config, the master key, auth
(hvt.proxy.auth.user_api_key_auth) and the supervisor (`hvt litellm-config`, `hvt proxy`).

May import: config, trajectory (the callback it serves) and the leaves.
"""
