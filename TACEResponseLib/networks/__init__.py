"""Floor 3 — networks: architectures of the three papers, ImageNet weights, devices, model
bundles (weights + card) and the model catalogue (``Resources/Models.json``).

May import :mod:`~TACEResponseLib.core` and :mod:`~TACEResponseLib.imaging`.
"""
