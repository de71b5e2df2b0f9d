"""Floor 6 — training and evaluation of response models. Evaluation predicts through
:mod:`TACEResponseLib.prediction`, so training sits above it.

May import ``core``, ``imaging``, ``networks``, ``survival`` and ``prediction``. Not part of the
Slicer install (the module never trains).
"""
