"""Honest survival numbers at the full defaults: pure-noise deep features and a real signal.

Issue 23's reviewer experiment, rerun with the defaults a user gets (nested 5-fold CV of the
signature, 200 optimism-bootstrap resamples, 1000 bootstrap resamples for the CIs):

* **noise** — 512 random "deep features" beside real clinical effects (BCLC, ALT; tumour size
  has none), 200 SYNTHETIC patients, 30% held out, several seeds: the signature's nested CV
  C-index, the signature nomogram's apparent / Harrell-corrected / .632+ training C-index, the
  training combined − clinical difference (apparent and optimism-corrected; no test) and the
  held-out difference with its CI;
* **signal** — 5 of 512 features carry survival information (log HR ±0.6 per SD), 200 training
  and 200 external-validation patients: the external combined − clinical difference and its CI.

The optimism bootstrap runs on a local Dask cluster (``--workers``). Prints a table and writes
benchmarks/results/survival_validation.json. SYNTHETIC data; the numbers describe the method.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from _common import print_table, save_results

from TACEResponseLib.core.tasks import ClusterOptions
from TACEResponseLib.survival.fitting import SurvivalConfig, run_survival_pipeline
from TACEResponseLib.survival.synthetic import EVENT_COL, TIME_COL, synthetic_feature_cohort


def _row(kind: str, seed: int, result, seconds: float) -> dict:
    report = result.report
    signature = result.signature_stage.signature
    optimism = report.get("optimism") or {}
    sig = (optimism.get("models") or {}).get("signature") or {}
    rows = {d["cohort"]: d for d in report["c_index_difference"]}
    training, held = rows.get("training") or {}, rows.get("validation") or {}
    return {
        "case": kind, "seed": seed, "cv_cindex_nested": signature.cv_cindex, "tuning_cindex": signature.tuning_cindex,
        "signature_c_apparent": (sig.get("c_index") or {}).get("apparent"),
        "signature_c_harrell": (sig.get("c_index") or {}).get("corrected"),
        "signature_c_632plus": (sig.get("c_index_632plus") or {}).get("estimate"),
        "train_dC_apparent": training.get("difference_apparent"), "train_dC_corrected": training.get("difference_corrected"),
        "train_p": training.get("p_value"), "val_dC": held.get("difference"), "val_ci_low": held.get("ci_lower"),
        "val_ci_high": held.get("ci_upper"), "val_p": held.get("p_value"), "claim": held.get("claim"),
        "resamples_fitted": optimism.get("n_valid"), "seconds": round(seconds, 1),
        "combined": result.selections["combined"].selected if "combined" in result.selections else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimism-boot", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--features", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cluster = ClusterOptions(workers=args.workers, dashboard=False)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            features, clinical, _ = synthetic_feature_cohort(200, n_features=args.features, n_informative=0, seed=seed)
            config = SurvivalConfig(time_col=TIME_COL, event_col=EVENT_COL,
                                    clinical_covariates=["BCLC", "ALT", "tumour_size"], n_boot=args.n_boot,
                                    optimism_boot=args.optimism_boot, seed=seed)
            started = time.perf_counter()
            result = run_survival_pipeline(features.reset_index(), clinical.reset_index(), Path(work) / f"noise{seed}",
                                           config, cluster=cluster)
            rows.append(_row("noise", seed, result, time.perf_counter() - started))
            print_table(rows[-1:], list(rows[-1]))
        features, clinical, _ = synthetic_feature_cohort(400, n_features=args.features, n_informative=5, effect=0.6,
                                                         seed=31)
        train, external = clinical.index[:200], clinical.index[200:]
        config = SurvivalConfig(time_col=TIME_COL, event_col=EVENT_COL, clinical_covariates=["BCLC", "ALT"],
                                n_boot=args.n_boot, optimism_boot=args.optimism_boot, seed=31)
        started = time.perf_counter()
        result = run_survival_pipeline(features.loc[train].reset_index(), clinical.loc[train].reset_index(),
                                       Path(work) / "signal", config, cluster=cluster,
                                       validation_features=features.loc[external].reset_index(),
                                       validation_clinical=clinical.loc[external].reset_index())
        rows.append(_row("signal", 31, result, time.perf_counter() - started))
    columns = ["case", "seed", "cv_cindex_nested", "tuning_cindex", "signature_c_apparent", "signature_c_harrell",
               "signature_c_632plus", "train_dC_apparent", "train_dC_corrected", "train_p", "val_dC", "val_ci_low",
               "val_ci_high", "val_p", "resamples_fitted", "seconds"]
    print()
    print_table(rows, columns)
    save_results("survival_validation", {"settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
