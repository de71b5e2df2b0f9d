"""Floor 8 — the Slicer side: MRML nodes (:mod:`.mrml`), the panel's Qt-free logic
(:mod:`.panel`), the background process (:mod:`.process`), the self-test bodies
(:mod:`.selftest`) and batch prediction inside Slicer (:mod:`.slicer_batch`).

May import every computation package; nothing outside this package imports it.
"""
