"""The image-like DICOM results, each built by highdicom: the SEG of the tumours a prediction used,
the heatmap as a Parametric Map, and the overlay as a Secondary Capture.

- **SEG** (BINARY): one segment per predicted tumour (an island of a segment under the model's
  island rule), labelled as the result labels it, SNOMED CT Mass in Liver, SEMIAUTOMATIC with the
  algorithm identified (model name, version, bundle sha256, the island rule). Frames lie on the
  reference grid, only the slices the tumours touch; highdicom records which source image each
  frame was derived from.
- **Parametric Map**: the heatmap (float32, values 0–1) on full source slices over the slices it
  covers, its Real World Value Mapping "relative class activation, 0-1", quantity DICOM ``130402``
  Class activation (``130403`` for Grad-CAM), content qualification RESEARCH.
- **Secondary Capture** (RGB): per tumour, the overlay figure with a research-use banner burned in
  (Burned In Annotation YES), for viewers that show neither SEG nor parametric maps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, grid_offset
from TACEResponseLib.pacs import codes
from TACEResponseLib.pacs.source import SourceSeries, highdicom_volume

logger = logging.getLogger(__name__)

MANUFACTURER = "TACEResponse"
#: the sentence every object carries (series description, content description, burned-in banner)
RESEARCH_ONLY = "RESEARCH USE ONLY - not for diagnosis or treatment decisions"


@dataclass
class Identity:
    """Who made the objects: the model (name, version, bundle sha256), the software version, whether the
    model is SYNTHETIC, and the research-use sentence. ``model`` False: no model made them (e.g. a response
    assessment, named by ``model_name``): no bundle checksum is stated."""

    model_name: str
    model_version: str
    bundle_sha256: str
    software_version: str
    synthetic: bool
    caveat: str
    model: bool = True

    @classmethod
    def of(cls, result, software_version: str) -> "Identity":
        name, _, version = str(result.bundle_id).partition("@")
        caveat = RESEARCH_ONLY + (" - SYNTHETIC demo model, not trained on patients" if result.synthetic_model else "")
        return cls(codes.dicom_text(name), codes.dicom_text(version or "unknown"), result.bundle_sha256,
                   software_version, bool(result.synthetic_model), caveat)

    def equipment(self) -> dict[str, Any]:
        """The General Equipment module's values (model as the device; its sha256's start as serial number)."""
        return {"manufacturer": MANUFACTURER, "manufacturer_model_name": self.model_name[:64],
                "software_versions": [f"TACEResponse {self.software_version}"[:64], f"model {self.model_version}"[:64]],
                "device_serial_number": (self.bundle_sha256 or "unknown")[:16]}

    def algorithm_parameters(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        bundle = {"bundle_sha256": self.bundle_sha256 or "unknown"} if self.model else {}
        return {**bundle, **(extra or {})}


@dataclass
class TumourSegment:
    """One SEG segment: the tumour's label, its mask on the reference grid, and where it came from."""

    label: str
    mask: np.ndarray  # bool [k, j, i] on the reference grid
    tracking_uid: str
    source_segment: str
    volume_ml: float
    #: a Segmented Property Type Modifier of the Mass (e.g. the viable part of a tumour), or None
    type_modifier: Any = None


def series_description(kind: str, identity: Identity) -> str:
    return codes.dicom_text(f"RESEARCH USE ONLY - {kind} - {identity.model_name}")[:64]  # the caveat never cut


def _slice_range(masks: Sequence[np.ndarray]) -> tuple[int, int]:
    """The first and end (exclusive) slice any mask touches."""
    touched = np.zeros(masks[0].shape[0], bool)
    for mask in masks:
        touched |= mask.reshape(mask.shape[0], -1).any(axis=1)
    slices = np.nonzero(touched)[0]
    if not slices.size:
        raise InputError("the tumours used are empty on the reference grid; there is nothing to write as a SEG")
    return int(slices[0]), int(slices[-1]) + 1


def _shifted(ijk_to_ras: np.ndarray, k: int) -> np.ndarray:
    matrix = np.array(ijk_to_ras, float)
    matrix[:3, 3] = (ijk_to_ras @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
    return matrix


def segmentation_object(source: SourceSeries, reference: Volume, tumours: Sequence[TumourSegment],
                        identity: Identity, island_rule: str, uids: dict[str, str], series_number: int = 901):
    """The DICOM SEG of the tumours (one segment each, numbered in the given order from 1)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm

    lo, hi = _slice_range([t.mask for t in tumours])
    grid = Volume(np.zeros((hi - lo, *reference.shape_kji[1:]), np.uint8), _shifted(reference.ijk_to_ras, lo))
    stacked = np.stack([t.mask[lo:hi] for t in tumours], axis=-1).astype(np.uint8)
    volume = highdicom_volume(stacked, grid, source.frame_of_reference_uid,
                              channels={"SegmentNumber": list(range(1, len(tumours) + 1))})
    descriptions = []
    for number, tumour in enumerate(tumours, start=1):
        algorithm = hd.AlgorithmIdentificationSequence(
            name=f"TACEResponse {identity.model_name}"[:64], family=dcm.cid7162.ArtificialIntelligence,
            version=identity.model_version[:64],
            parameters=identity.algorithm_parameters({"tumour_rule": codes.dicom_text(island_rule)[:64],
                                                      "source_segment": codes.dicom_text(tumour.source_segment)[:64]}))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=codes.dicom_text(tumour.label)[:64],
            segmented_property_category=dcm.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=dcm.SCT.Mass, algorithm_type="SEMIAUTOMATIC",
            algorithm_identification=algorithm, tracking_uid=tumour.tracking_uid,
            tracking_id=codes.dicom_text(tumour.label)[:64], anatomic_regions=[dcm.SCT.Liver]))
        if tumour.type_modifier is not None:  # nested in the type's item (Segment Description macro)
            descriptions[-1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                tumour.type_modifier]
    seg = hd.seg.Segmentation(
        source_images=source.datasets, pixel_array=volume, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=uids["series"], series_number=series_number,
        sop_instance_uid=uids["instance"], instance_number=1, **identity.equipment(),
        content_label="TUMOURS", content_description=f"Tumours used - {RESEARCH_ONLY}"[:64],
        series_description=series_description("Tumours (SEG)", identity))
    if any(getattr(t.type_modifier, "scheme_designator", "") == codes.LOCAL_SCHEME for t in tumours):
        codes.declare_local_scheme(seg)
    return seg


def parametric_map_object(source: SourceSeries, reference: Volume, heatmap: Volume, identity: Identity,
                          method: str, uids: dict[str, str], series_number: int = 902):
    """The heatmap as a float Parametric Map on the source slices it covers (zero outside its box)."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes as dcm

    from TACEResponseLib.prediction.cam import heatmap_values

    heat = heatmap_values(heatmap)
    box_lo = grid_offset(heat, reference)  # the heatmap covers a box of the reference grid
    if box_lo is None:
        raise InputError("the heatmap does not lie on the reference image's grid; it cannot be written as a "
                         "parametric map of the source series")
    box_hi = box_lo + np.asarray(heat.shape_kji)
    lo, hi = int(box_lo[0]), int(box_hi[0])
    values = np.zeros((hi - lo, *reference.shape_kji[1:]), np.float32)
    values[:, box_lo[1]:box_hi[1], box_lo[2]:box_hi[2]] = np.clip(heat.array, 0.0, 1.0)
    grid = Volume(values, _shifted(reference.ijk_to_ras, lo))
    quantity = dcm.DCM.GradientWeightedClassActivation if method == "gradcam" else dcm.DCM.ClassActivation
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CAM", lut_explanation="relative class activation, 0-1", unit=dcm.UCUM.NoUnits,
        value_range=(0.0, 1.0), slope=1.0, intercept=0.0, quantity_definition=quantity)
    pm = hd.pm.ParametricMap(
        source_images=source.datasets, pixel_array=highdicom_volume(values, grid, source.frame_of_reference_uid),
        series_instance_uid=uids["series"], series_number=series_number, sop_instance_uid=uids["instance"],
        instance_number=1, **identity.equipment(), contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="CAM", content_description=f"Where the network looked - {RESEARCH_ONLY}"[:64],
        series_description=series_description("Heatmap (parametric map)", identity))
    anatomy = Dataset()  # the liver, an unpaired organ: frame laterality U (General Series Laterality not needed)
    anatomy.FrameLaterality = "U"
    anatomy.AnatomicRegionSequence = [codes.standard("SCT.Liver")]
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
    return pm


def burn_in_caveat(png: Path, caveat: str) -> np.ndarray:
    """The RGB pixels of ``png`` with a banner above stating ``caveat`` (burned in: a viewer always shows
    it), in the largest font that fits the width, on two lines when one would be too small to read."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.open(png).convert("RGB")

    def font_of(size: int):
        try:
            return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
        except OSError:
            return ImageFont.load_default(size=size)

    measure = ImageDraw.Draw(image)
    words = caveat.split(" - ", 1)
    for lines in ([caveat], [words[0], words[-1]] if len(words) > 1 else [caveat]):
        size = max(10, image.width // 45)
        while size > 10 and max(measure.textlength(line, font=font_of(size)) for line in lines) > 0.96 * image.width:
            size -= 1
        if size >= 14 or len(lines) > 1:
            break
    font = font_of(size)
    line_height = int(size * 1.35)
    banner = line_height * len(lines) + size // 2
    out = Image.new("RGB", (image.width, image.height + banner), (255, 255, 255))
    out.paste(image, (0, banner))
    draw = ImageDraw.Draw(out)
    draw.rectangle([0, 0, image.width, banner - 1], fill=(150, 0, 0))
    for n, line in enumerate(lines):
        draw.text((image.width // 2, size // 4 + line_height * n + line_height // 2), line, fill=(255, 255, 255),
                  font=font, anchor="mm")
    return np.asarray(out, np.uint8)


#: how the figure's whole-slice panel is shown (radiological convention), per slice axis → Patient Orientation
PANEL_ORIENTATION = {"axial": ("L", "P"), "coronal": ("L", "F"), "sagittal": ("P", "F")}


def secondary_capture_object(source: SourceSeries, pixels: np.ndarray, identity: Identity, axis: str,
                             uids: dict[str, str], number: int, series_number: int = 904):
    """One overlay figure (RGB, caveat burned in) as a Secondary Capture of the source study."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source.first, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=uids["series"], series_number=series_number,
        sop_instance_uid=uids["instance"], instance_number=number, manufacturer=MANUFACTURER,
        patient_orientation=PANEL_ORIENTATION.get(axis, ("L", "P")), transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description("Overlay (secondary capture)", identity))
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "LIVER"  # unpaired: no laterality
    sc.ImageComments = identity.caveat
    return sc
