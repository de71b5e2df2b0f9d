"""TACEResponse: liver tumour response to TACE/HAIC and survival, in 3D Slicer.

Thin module file: GUI wiring and MRML in/out only. All computation lives in
``TACEResponseLib`` (importable without Slicer), so pytest reaches it headless.
No heavy import (torch, monai, lifelines) happens at module import time.
"""

from __future__ import annotations

import os
import sys

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

# TACEResponseLib sits beside this module in the source tree and in the build/install tree.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_candidate, "TACEResponseLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)


class TACEResponse(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "TACE Response"
        self.parent.categories = ["Liver"]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["TACEResponse developers"]
        self.parent.helpText = """
Predicts how a liver tumour will respond to TACE or HAIC from the pre-treatment CT or MRI.
<ul>
<li><b>Inputs</b>: the reference volume (e.g. arterial-phase CT), further phases or MRI
sequences when the chosen model needs them, and the tumour drawn in the Segment Editor.</li>
<li><b>Outputs</b>: mRECIST class probabilities (CR / PR / SD / PD) and objective response
(CR+PR) per tumour in a table, a class-activation heatmap shown over the image, and a survival
nomogram with the patient's points, risk group and survival curve.</li>
</ul>
<b>Research use only.</b> Not a medical device. The bundled demo model is trained on synthetic
phantoms and is not for clinical use.
"""
        self.parent.acknowledgementText = """
Reproduces three published methods: Peng J. et al., Eur Radiol 2019 (ResNet50 transfer
learning, 4-class TACE response on CT); Quan B. et al., J Imaging Inform Med 2024
(InceptionV4, multi-sequence MRI and clinical factors, HAIC response); Zhang L. et al.,
Front Oncol 2020 (DenseNet-121 deep-learning signature and nomogram for overall survival after
TACE plus sorafenib).
"""
