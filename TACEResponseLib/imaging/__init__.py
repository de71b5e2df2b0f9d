"""Floor 2 — images and tumours: volumes with their IJK→RAS geometry, readers and writers,
segmentations (.seg.nrrd, labelmaps, DICOM SEG), the tumours of a case, patches, radiological views,
cohort manifests and the importers of the public TACE collections, phantoms.

May import :mod:`TACEResponseLib.core` only. No torch here.
"""
