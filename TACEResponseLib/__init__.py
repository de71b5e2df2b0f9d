"""TACEResponse computation library: plain Python, importable without Slicer.

Subpackages follow the data, each importing only from the floors below it (a test holds the
import graph to this; ``Testing/test_layers.py``):

=========  =============  ==========================================================================
floor      package        owns
=========  =============  ==========================================================================
1          ``core``       errors, atomic files, file names, content fingerprints, JSON records, figures
2          ``imaging``    volumes + geometry, readers/writers, segmentations, tumours, patches, views,
                          manifests, phantoms
3          ``networks``   architectures, ImageNet weights, devices, bundles, the model catalogue
3          ``assessment`` response from baseline and follow-up: viable tumour, calipers, mRECIST, RECIST 1.1,
                          EASL, volumetric, lesion matching, visit manifests (beside ``networks``; neither
                          imports the other)
4          ``survival``   Zhang 2020: deep features, ICC, signature, Cox, nomogram, survival models
5          ``prediction`` one case → result (+ CAM heatmap, survival read-out), batches, figures
6          ``training``   training and evaluation of response models (they predict through ``prediction``)
6          ``pacs``       DICOM SEG / parametric map / TID 1500 report / secondary capture of a result; PACS I/O
7          ``demo``       the SYNTHETIC demo case and the builders of the two demo models
8          ``frontend``   the Slicer side: MRML nodes, panel logic, background process, self-test bodies
8          ``cli``        ``tace-response``: the only place that parses arguments
=========  =============  ==========================================================================

Nothing outside ``frontend`` imports it, and ``frontend`` and ``cli`` do not import each other
(the Slicer module runs ``python -m TACEResponseLib.cli`` as a separate process), except that
``tace-response web`` imports the web page (``frontend.web``) inside its command function.
"""
