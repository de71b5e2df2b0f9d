"""Floor 2 — images and tumours: volumes with their IJK→RAS geometry, readers and writers,
segmentations, the tumours of a case, patches, radiological views, cohort manifests, phantoms.

May import :mod:`TACEResponseLib.core` only. No torch here.
"""
