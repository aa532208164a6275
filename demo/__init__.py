"""The demo: its base data (``seed_demo``), six months of history made through the
services (``demo.history``), and the demo fleet wired into the local executor."""
