"""The saved survival model (``survival_model.json``) and one patient's nomogram read-out.

:class:`SurvivalModel` points to the nomogram and signature files and stores the deep-feature
settings and weights hash, so one case (its images, segment and clinical values) gives the
patient's points, survival at 12/24/36 months, risk group and curve with the same extractor
as at fitting time. Clinical inputs are checked by :class:`VariableSpec` (categories or a
valid numeric range; outside the training range only warns).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import write_json_atomic
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.segmentation import Segmentation
from TACEResponseLib.survival.deep_features import (
    RESEARCH_NOTE,
    DeepFeatureExtractor,
    FeatureSettings,
)

logger = logging.getLogger(__name__)

MODEL_KIND = "TACEResponse survival model"


#: Values a clinical variable can take at all (a hard error outside); training range only warns.
DEFAULT_VALID_RANGES: dict[str, tuple[float, float]] = {
    "ALT": (0.0, 10000.0),
    "AST": (0.0, 10000.0),
    "AFP": (0.0, 1e7),
    "tumour_size": (0.0, 40.0),
    "albumin": (0.0, 100.0),
    "bilirubin": (0.0, 1000.0),
    "age": (0.0, 120.0),
}


# --- the saved model ------------------------------------------------------------------------
@dataclass
class VariableSpec(JsonRecord):
    """How a clinical input of the nomogram is checked: categories, or a valid numeric range."""

    name: str
    label: str = ""
    levels: dict[str, float] | None = None
    valid_range: tuple[float, float] | None = None
    training_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for key in ("valid_range", "training_range"):  # JSON has no infinity: an open end is null
            if data[key] is not None:
                data[key] = [None if not math.isfinite(v) else v for v in data[key]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "VariableSpec":
        data = dict(data)
        if data.get("valid_range") is not None:
            low, high = data["valid_range"]
            data["valid_range"] = (-math.inf if low is None else float(low), math.inf if high is None else float(high))
        return super().from_dict(data, source)

    def parse(self, value: Any) -> float:
        """The numeric value the nomogram uses, or an InputError naming this variable."""
        title = f"clinical variable {self.name!r}" + (f" ({self.label})" if self.label and self.label != self.name else "")
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{title} is empty; give a value")
        if self.levels:
            lookup = {str(k).strip().upper(): float(v) for k, v in self.levels.items()}
            text = str(value).strip()
            if text.upper() in lookup:
                return lookup[text.upper()]
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number in lookup.values():
                return number
            raise InputError(f"{title} = {value!r} is not a valid category; use one of {list(self.levels)} "
                             f"(or their codes {sorted(set(lookup.values()))})")
        try:
            number = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise InputError(f"{title} = {value!r} is not a number") from None
        if not math.isfinite(number):
            raise InputError(f"{title} = {value!r} is not a finite number")
        if self.valid_range is not None:
            low, high = self.valid_range
            if not low <= number <= high:
                raise InputError(f"{title} = {number:g} is out of range; valid values are {low:g} to {high:g}")
        return number


def default_variable_spec(name: str, nomogram_variable: Any) -> VariableSpec:
    levels = dict(nomogram_variable.levels) if nomogram_variable.levels else None
    valid = None if levels else DEFAULT_VALID_RANGES.get(name)
    return VariableSpec(name=name, label=nomogram_variable.title, levels=levels, valid_range=valid,
                        training_range=(float(nomogram_variable.minimum), float(nomogram_variable.maximum)))


class SurvivalModel:
    """Nomogram + (optional) deep-learning signature + the feature settings it was fitted with.

    Saved as ``survival_model.json`` pointing to the nomogram and signature JSON files (paths
    relative to it). :meth:`patient` gives one case's nomogram read-out.
    """

    def __init__(self, nomogram: Any, signature: Any = None, features: FeatureSettings | None = None,
                 weights: Mapping[str, Any] | None = None, *, signature_name: str = "signature",
                 variables: Mapping[str, VariableSpec] | None = None, note: str = "",
                 files: Mapping[str, str] | None = None, path: Path | None = None) -> None:
        self.nomogram = nomogram
        self.signature = signature
        self.features = features
        self.weights = dict(weights) if weights else None
        self.signature_name = signature_name
        self.note = note
        self.files = dict(files or {})
        self.path = path
        names = [v.name for v in nomogram.variables]
        self.variables = {n: (variables or {}).get(n) or default_variable_spec(n, v)
                          for n, v in zip(names, nomogram.variables) if n != signature_name}
        self._extractor: DeepFeatureExtractor | None = None

    @property
    def uses_signature(self) -> bool:
        return any(v.name == self.signature_name for v in self.nomogram.variables)

    @property
    def clinical_variables(self) -> list[str]:
        return [v.name for v in self.nomogram.variables if v.name != self.signature_name]

    @property
    def image_phases(self) -> list[str]:
        """Phases the signature is computed from (first = reference grid); empty when no image is needed."""
        return list(self.features.phases) if self.uses_signature and self.features is not None else []

    @property
    def name(self) -> str:
        """For messages: the model's folder name, else the nomogram's name."""
        return self.path.parent.name if self.path is not None and self.path.name == "survival_model.json" \
            else self.nomogram.name

    # persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``survival_model.json``; nomogram/signature are written beside it if not there yet."""
        path = Path(path)
        folder = path.parent
        files = dict(self.files)
        files.setdefault("nomogram", f"nomogram_{self.nomogram.name}.json")
        if not (folder / files["nomogram"]).is_file():
            self.nomogram.save_json(folder / files["nomogram"])
        if self.signature is not None:
            files.setdefault("signature", "signature.json")
            if not (folder / files["signature"]).is_file():
                self.signature.save_json(folder / files["signature"])
        data = {
            "kind": MODEL_KIND, "version": 1, "note": self.note or RESEARCH_NOTE,
            "files": files, "signature_name": self.signature_name,
            "features": self.features.to_dict() if self.features else None,
            "patch_spec": self.features.patch_spec.to_dict() if self.features else None,
            "weights": self.weights,
            "variables": {k: v.to_dict() for k, v in self.variables.items()},
            "nomogram_variables": [v.name for v in self.nomogram.variables],
            "time_unit": self.nomogram.time_unit, "survival_times": list(self.nomogram.survival_times),
        }
        self.files = files
        self.path = path
        return write_json_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> "SurvivalModel":
        from TACEResponseLib.survival.nomogram import Nomogram
        from TACEResponseLib.survival.selection import Signature

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"survival model {path}: cannot be read as JSON ({exc})") from exc
        if data.get("kind") == "TACEResponse Cox nomogram":  # a bare nomogram file
            return cls(Nomogram.from_dict(data), path=path)
        if data.get("kind") != MODEL_KIND:
            raise InputError(f"{path}: not a survival model or nomogram file (kind {data.get('kind')!r})")
        files = data.get("files") or {}
        if "nomogram" not in files:
            raise InputError(f"survival model {path}: names no nomogram file")
        nomogram = Nomogram.load_json(path.parent / files["nomogram"])
        signature = Signature.load_json(path.parent / files["signature"]) if files.get("signature") else None
        features = FeatureSettings.from_dict(data["features"]) if data.get("features") else None
        variables = {k: VariableSpec.from_dict(v) for k, v in (data.get("variables") or {}).items()}
        return cls(nomogram, signature, features, data.get("weights"), signature_name=data.get("signature_name", "signature"),
                   variables=variables, note=data.get("note", ""), files=files, path=path)

    # per patient -------------------------------------------------------------------------
    def extractor(self, device: str = "auto") -> DeepFeatureExtractor:
        """The fitting-time extractor (same settings; weights checked against the saved hash)."""
        if self.features is None:
            raise InputError("survival model: no deep-feature settings saved; it cannot compute the signature "
                             "from images")
        if self._extractor is None:
            extractor = DeepFeatureExtractor(self.features, device=device)
            expected = (self.weights or {}).get("sha256")
            if expected and extractor.weights.sha256 != expected:
                raise InputError(
                    f"survival model: the DenseNet weights here (sha256 {extractor.weights.sha256[:12]}…, "
                    f"{extractor.weights.label}) differ from those the signature was fitted with "
                    f"(sha256 {expected[:12]}…); the signature would be meaningless. Use the same weights file "
                    "(or the same torch version for a seeded random init)")
            self._extractor = extractor
        return self._extractor

    def clinical_values(self, clinical: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
        """Validated codes of the clinical variables, and the names outside the training range."""
        clinical = dict(clinical or {})
        missing = [n for n in self.clinical_variables if n not in clinical]
        if missing:
            needs = ", ".join(f"{n} ({self.variables[n].label})" if self.variables[n].label not in ("", n) else n
                              for n in self.clinical_variables)
            raise InputError(f"missing clinical variable(s) {missing}; the nomogram {self.nomogram.name!r} needs: {needs}"
                             + (f" (+ the {self.signature_name} computed from the images)" if self.uses_signature else ""))
        values = {n: self.variables[n].parse(clinical[n]) for n in self.clinical_variables}
        linear = {v.name for v in self.nomogram.variables if v.coding == "linear"}  # cut-offs and categories do not extrapolate
        outside = [n for n, v in values.items() if n in linear and self.variables[n].training_range is not None
                   and not self.variables[n].training_range[0] <= v <= self.variables[n].training_range[1]]
        return values, outside

    def patient(self, clinical: Mapping[str, Any], images: Mapping[str, Volume] | Sequence[Volume] | None = None,
                segmentation: Segmentation | str | Path | None = None, segment: str | Mapping[str, str] | None = None,
                case_id: str = "case", device: str = "auto") -> dict[str, Any]:
        """The patient's read-out as a plain dict (the ``survival`` of a result JSON).

        Keys: ``points`` per variable, ``total_points``, ``linear_predictor``, ``survival_times`` +
        ``survival`` and ``survival_at`` (12/24/36 months), ``risk_group``, ``curve`` {times,
        survival}, ``values`` (what the nomogram used), ``signature`` (value, how computed),
        ``extrapolated`` (variables outside the training range), ``warnings``, ``model``.
        """
        values, outside = self.clinical_values(clinical)
        warnings: list[str] = []
        signature_info = None
        if self.uses_signature:
            if images is not None and segmentation is not None:
                if self.signature is None:
                    raise InputError("survival model: the nomogram uses the signature but no signature file is saved")
                extractor = self.extractor(device)
                features = extractor.extract_volumes(images, segmentation, segment, case_id=case_id)
                value = float(self.signature.score(features.to_frame().T)[0])
                signature_info = {"name": self.signature_name, "value": value, "source": "computed from the images",
                                  "n_features": len(self.signature.feature_names), "phases": self.features.phases,
                                  "weights": extractor.weights.label, "weights_sha256": extractor.weights.sha256,
                                  "patch": extractor.case_info.get(case_id, {})}
                if self.signature_name in (clinical or {}):
                    warnings.append(f"the given {self.signature_name} value was ignored; it was computed from the images")
                if self.features.roi_per_phase and not isinstance(segment, Mapping):
                    warnings.append("the signature was fitted with one tumour segment per phase; this case used one "
                                    f"segment for all phases ({', '.join(self.features.phases)})")
            elif self.signature_name in (clinical or {}):
                try:
                    value = float(clinical[self.signature_name])
                except (TypeError, ValueError):
                    raise InputError(f"{self.signature_name} = {clinical[self.signature_name]!r} is not a number") from None
                signature_info = {"name": self.signature_name, "value": value, "source": "given"}
            else:
                raise InputError(f"the nomogram {self.nomogram.name!r} uses the deep-learning {self.signature_name}: "
                                 "give the case's images and tumour segmentation (and use the survival_model.json "
                                 f"written by 'tace-response survival run'), or a precomputed {self.signature_name}=VALUE")
            values[self.signature_name] = value
            var = next(v for v in self.nomogram.variables if v.name == self.signature_name)
            if not var.minimum <= value <= var.maximum:
                outside.append(self.signature_name)
        if outside:
            warnings.append(f"outside the training range (points extrapolated): {', '.join(outside)}")
        patient = self.nomogram.patient(values)
        out = patient.to_dict()
        unit = self.nomogram.time_unit
        out.update({
            "survival_at": {f"{t:g} {unit}": s for t, s in zip(patient.survival_times, patient.survival)},
            "curve": {"times": list(patient.curve_times), "survival": list(patient.curve_survival)},
            "signature": signature_info,
            "segment": segment,
            "extrapolated": outside,
            "warnings": warnings,
            "model_file": str(self.path) if self.path else None,
            "weights": (self.weights or {}).get("label") if self.uses_signature else None,
            "note": self.note or RESEARCH_NOTE,
        })
        return out


def load_survival_model(source: Any) -> SurvivalModel:
    """A :class:`SurvivalModel` from itself, a :class:`~.nomogram.Nomogram`, or a path to either's JSON."""
    from TACEResponseLib.survival.nomogram import Nomogram

    if isinstance(source, SurvivalModel):
        return source
    if isinstance(source, Nomogram):
        return SurvivalModel(source)
    if isinstance(source, (str, Path)):
        return SurvivalModel.load(source)
    raise InputError(f"survival model: expected a survival_model.json / nomogram path or object, got {type(source).__name__}")


def nomogram_figure(nomogram_path: str | Path, survival: Mapping[str, Any], png: str | Path,
                    title: str | None = None) -> Path:
    """The nomogram (of a survival model or nomogram file) with the patient's values and points marked."""
    from TACEResponseLib.survival.nomogram import PatientNomogram, plot_nomogram

    model = load_survival_model(Path(nomogram_path))
    known = {f.name for f in dataclasses.fields(PatientNomogram)}
    patient = PatientNomogram(**{k: v for k, v in survival.items() if k in known})
    return plot_nomogram(model.nomogram, png, patient=patient, title=title)
