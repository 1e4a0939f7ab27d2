"""The interactive migration demo: `quicmig demo` / `python migration_demo.py`.

Each scenario runs in the simulator; the sequence diagrams show packets that aioquic itself
sent or authenticated (see `observe`), never a script of what should happen.
"""
