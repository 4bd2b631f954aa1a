"""Harbor side of harbor-verl-train: sandbox environments and the agent adapter."""
