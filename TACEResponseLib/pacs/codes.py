"""The coded concepts of the DICOM results: standard codes wherever DICOM has one, local codes otherwise.

Standard (DICOM PS3.16): the response classes are CID 6144 "RECIST Defined Lesion Response"
(``112041`` Target Lesion Complete Response, ``112042`` Partial Response, ``112044`` Stable
Disease, ``112043`` Progressive Disease) under the concept ``112020`` "Response Evaluation"; the
tumour is SNOMED CT ``4147007`` Mass in ``10200004`` Liver (category ``49755003`` Morphologically
abnormal structure); the heatmap's quantity is ``130402`` "Class activation" (``130403`` for
Grad-CAM); yes/no are CID 230; risk groups CID 3118; the volume SNOMED CT ``118565006``; a
spread is the derivation ``386136009`` Standard Deviation.

What DICOM has no code for (the probability of one predicted class, predictive entropy, the
out-of-distribution check, the mRECIST method, nomogram points, survival at a time) uses the local
coding scheme :data:`LOCAL_SCHEME` (``99`` = private, PS3.16 §8.2), declared in each object's
Coding Scheme Identification Sequence so a reader can see whose codes they are.
"""

from __future__ import annotations

import re
from typing import Any

#: the local coding scheme designator and its declaration
LOCAL_SCHEME = "99TACER"
LOCAL_SCHEME_NAME = "TACEResponse local codes (research use only)"
LOCAL_SCHEME_OWNER = "TACEResponse project"

#: standard class names of a response model (mRECIST) → their DICOM code value (CID 6144)
RESPONSE_CODES = {
    "CR": ("112041", "Target Lesion Complete Response"),
    "PR": ("112042", "Target Lesion Partial Response"),
    "SD": ("112044", "Target Lesion Stable Disease"),
    "PD": ("112043", "Target Lesion Progressive Disease"),
}

#: what the class names mean in words (the local codes' meanings)
CLASS_WORDS = {"CR": "complete response", "PR": "partial response", "SD": "stable disease",
               "PD": "progressive disease", "responder": "response (responder)",
               "non-responder": "no response (non-responder)", "non_responder": "no response (non-responder)"}


#: typographic characters of the library's sentences → what every DICOM character set holds
ASCII_FOR = {"—": "-", "–": "-", "−": "-", "→": "->", "←": "<-", "≥": ">=", "≤": "<=", "±": "+/-", "×": "x", "…": "...",
             "’": "'", "‘": "'", "“": '"', "”": '"', "⚠": "!", "²": "2", "³": "3", "µ": "u", "°": " deg"}


def dicom_text(text: str) -> str:
    """``text`` in plain ASCII (the source's character set, often Latin-1, must hold what we add)."""
    text = "".join(ASCII_FOR.get(c, c) for c in str(text))
    return text.encode("ascii", "replace").decode("ascii")


def coded(value: str, scheme: str, meaning: str):
    """A highdicom :class:`~highdicom.sr.CodedConcept`."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=dicom_text(meaning)[:64])


def local(value: str, meaning: str):
    """A concept of :data:`LOCAL_SCHEME` (code values: letters, digits, ``-``; at most 16 characters)."""
    value = re.sub(r"[^A-Za-z0-9.-]+", "-", value).strip("-")[:16] or "X"
    return coded(value, LOCAL_SCHEME, meaning)


def standard(name: str):
    """A code of pydicom's dictionary by ``SCHEME.Keyword`` (``"SCT.Liver"``, ``"DCM.ClassActivation"``)."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    scheme, keyword = name.split(".")
    return CodedConcept.from_code(getattr(getattr(codes, scheme), keyword))


def coding_scheme_identification() -> list[Any]:
    """The Coding Scheme Identification Sequence item declaring :data:`LOCAL_SCHEME`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = LOCAL_SCHEME_OWNER
    return [item]


def declare_local_scheme(dataset) -> None:
    """Add the declaration of :data:`LOCAL_SCHEME` to ``dataset`` (once)."""
    present = [i for i in dataset.get("CodingSchemeIdentificationSequence", []) if
               i.get("CodingSchemeDesignator") == LOCAL_SCHEME]
    if not present:
        dataset.CodingSchemeIdentificationSequence = [*dataset.get("CodingSchemeIdentificationSequence", []),
                                                      *coding_scheme_identification()]


def class_words(name: str) -> str:
    return CLASS_WORDS.get(name, CLASS_WORDS.get(name.lower(), name))


def response_code(class_name: str):
    """The coded value of a predicted class: the CID 6144 code for CR/PR/SD/PD, else a local code."""
    if class_name.upper() in RESPONSE_CODES:
        value, meaning = RESPONSE_CODES[class_name.upper()]
        return coded(value, "DCM", meaning)
    return local(f"C-{class_name}", f"Predicted {class_words(class_name)}")


def response_method(class_names: list[str]):
    """How the classes are defined: mRECIST for CR/PR/SD/PD, else the model's own classes."""
    if {c.upper() for c in class_names} <= set(RESPONSE_CODES):
        return local(*MRECIST_NAME)
    return local("CLASSES", "Response classes of the model: " + ", ".join(class_names))


def probability_name(class_name: str):
    return local(f"P-{class_name}", f"Predicted probability of {class_words(class_name)}")


def unit(kind: str):
    """UCUM units: ``ml``, ``1`` (no units), ``nat`` (entropy), ``points`` (nomogram)."""
    return {"ml": coded("ml", "UCUM", "milliliter"), "1": coded("1", "UCUM", "no units"),
            "nat": coded("{nat}", "UCUM", "nat"), "points": coded("{points}", "UCUM", "points")}[kind]


def yes_no(value: bool | None):
    return standard("SCT.Undetermined" if value is None else "SCT.Yes" if value else "SCT.No")


def risk_code(group: str):
    """``high``/``low`` → SNOMED CT High risk / Low risk (CID 3118); anything else a local code."""
    words = str(group).strip().lower()
    if words.startswith("high"):
        return standard("SCT.HighRisk")
    if words.startswith("low"):
        return standard("SCT.LowRisk")
    return local(f"RISK-{group}", f"Risk group {group}")


def survival_name(time: str):
    """``"12 months"`` → the local concept "Predicted overall survival probability at 12 months"."""
    compact = re.sub(r"\s+", "", time)
    return local(f"OS-{compact}", f"Predicted overall survival probability at {time}")


ORR_NAME = ("P-ORR", "Predicted probability of objective response (CR or PR)")
ENTROPY_NAME = ("ENTROPY", "Predictive entropy of the class probabilities")
OOD_NAME = ("OOD", "Image unlike the model's training data")
OOD_REASON_NAME = ("OOD-REASON", "Why the image is unlike the training data")
OOD_SCORE_NAME = ("OOD-SCORE", "Feature distance to the training data")
OOD_THRESHOLD_NAME = ("OOD-THRESHOLD", "Feature distance warning threshold")
POINTS_NAME = ("NOMO-POINTS", "Nomogram total points")
RISK_NAME = ("NOMO-RISK", "Nomogram risk group")
#: one meaning per local code value: a note on a prediction or on a measurement is the same concept
NOTE_NAME = ("NOTE", "Note")
MRECIST_NAME = ("MRECIST", "mRECIST (modified RECIST for hepatocellular carcinoma)")
