"""verl side of harbor-verl-train: the agent loop that runs Harbor trials."""
