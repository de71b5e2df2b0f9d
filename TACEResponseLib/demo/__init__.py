"""Floor 7 — the SYNTHETIC demo: the demo case (``tace-response demo run``) and the builders of the
two bundled demo models (``make demo-bundle``, ``make demo-survival-model``).

May import every computation package (``core`` … ``training``). Not part of the Slicer install.
"""
