"""smoke: the CPU smoke (`make smoke`, `hvt smoke`): one real rollout step with a tiny model.

May import every part and verl_patch/harbor_patch. Nothing imports it but the command line
(hvt.cli, hvt.commands).
"""
