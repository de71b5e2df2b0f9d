"""Floor 6 — results where radiologists read them: the DICOM objects of a prediction (SEG of the
tumours used, the CAM heatmap as a Parametric Map, a TID 1500 measurement report, a secondary
capture of the overlay), written through highdicom, and the PACS both ways (DICOMweb through
dicomweb-client, DIMSE through pynetdicom): send a folder, find and fetch a study's series.

May import ``core``, ``imaging``, ``networks``, ``survival`` and ``prediction``. highdicom, pynetdicom
and dicomweb-client are imported inside the functions that need them (the Slicer module's start-up
never pays for them).
"""
