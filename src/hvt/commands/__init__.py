"""The command line, one module per part: each `register(app)` adds that part's commands.

May import every part, smoke included (the only code that may); no part imports it. hvt/cli.py
builds the app from these modules and nothing else.
"""
