"""Floor 3 — response assessment from baseline and follow-up images: viable (arterially enhancing) tumour,
calipers measured in physical mm on true axial planes, target lesions, lesion matching across visits after
a rigid registration, and the published criteria (mRECIST, RECIST 1.1, EASL, volumetric) with nadir
tracking and a near-threshold flag; the visits manifest that labels a training cohort; overlay figures.

May import ``core`` and ``imaging`` only (it sits beside ``networks``, which it does not import: no
network is involved). No torch here.
"""
