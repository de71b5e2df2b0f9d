"""The cost of trust: test-time augmentation (TTA) beside the plain prediction, and the OOD check.

On the SYNTHETIC demo case with the bundled demo model (ResNet18, 224 px, 3 patches per tumour),
one tumour and then a three-tumour case, each on the auto-chosen engine (a checked ONNX graph
when available, else eager PyTorch) and on eager PyTorch: the whole in-memory prediction
(``Predictor.predict``) and its forward pass alone, with 1 view (plain), 3 and 6 views
(identity + the five flips/rotations of training). Forwards = patches × views, stacked into one
batch; the out-of-distribution score and calibration are computed in every run (their cost is
in the plain time). Medians of 5 runs after a warm-up.

Prints a table and writes benchmarks/results/trust.json.
"""

from __future__ import annotations

import argparse

from _common import print_table, save_results, time_call

from TACEResponseLib.demo.response_bundle import DEMO_NAME
from TACEResponseLib.imaging.phantoms import make_phantom
from TACEResponseLib.prediction.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = {"demo case (1 tumour)": make_phantom("PR", seed=7, case_id="demo_case"),
             "3 tumours": make_phantom(["CR", "SD", "PD"], seed=11, tumour_radius_mm=(10.0, 13.0))}
    rows = []
    for backend in ("auto", "torch"):
        for name, case in cases.items():
            images = [case.phases["arterial"]]
            plain = None
            for views in (1, 3, 6):
                predictor = Predictor(DEMO_NAME, device="cpu", cam_method="cam", backend=backend, tta=views)
                seconds, result = time_call(lambda: predictor.predict(images, case.segmentation), args.repeats,
                                            warmup=1)
                forward = sorted(predictor.predict(images, case.segmentation).timings["forward"]
                                 for _ in range(args.repeats))[args.repeats // 2]
                plain = plain or (seconds, forward)
                tumour = result.tumours[0]
                rows.append({"backend": predictor.engine.info.name, "case": name, "views": views,
                             "patches": result.trust["patches"], "forwards": result.trust["forwards"],
                             "predict_s": seconds, "forward_s": forward, "predict_vs_plain": seconds / plain[0],
                             "forward_vs_plain": forward / plain[1],
                             "sd_predicted": (None if tumour.trust.spread is None else
                                              tumour.trust.spread[tumour.class_names.index(tumour.predicted_class)]),
                             "ood_score": tumour.trust.ood_score, "ood_threshold": tumour.trust.ood_threshold})
    columns = ["backend", "case", "views", "patches", "forwards", "predict_s", "forward_s", "predict_vs_plain",
               "forward_vs_plain", "sd_predicted", "ood_score", "ood_threshold"]
    print_table(rows, columns)
    path = save_results("trust", {"description": __doc__, "repeats": args.repeats, "rows": rows})
    print(f"→ {path}")


if __name__ == "__main__":
    main()
