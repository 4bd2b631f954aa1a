"""config: the run's config file, read, validated and summarised; algorithm presets; where the
bundle and a run's files live (`hvt config`).

Imports nothing of ours but the leaves (hvt/deep_merge.py): every other part may import it.
"""
