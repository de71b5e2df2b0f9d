"""``tace-response cohort …``: the public TACE collections downloaded and imported into manifests."""

from __future__ import annotations

import argparse

from TACEResponseLib.cli.common import Command

COLLECTIONS = ("hcc-tace-seg", "waw-tace")


def cmd_import(args: argparse.Namespace) -> int:
    """Import a downloaded collection: manifest.csv, survival.csv and the import report."""
    if args.collection == "hcc-tace-seg":
        from TACEResponseLib.imaging.hcc_tace_seg import import_hcc_tace_seg

        report = import_hcc_tace_seg(args.source, args.output, args.clinical, sheet=args.sheet, reader=args.reader,
                                     os_unit=args.time_unit or "weeks", use_ai_segs=args.ai_segs)
    else:
        from TACEResponseLib.imaging.waw_tace import import_waw_tace

        report = import_waw_tace(args.source, args.output, args.clinical, sheet=args.sheet,
                                 response_column=args.response_column, time_unit=args.time_unit or "days")
    counts = report.counts
    print(f"{report.collection}: {counts['patients']} patients — {counts['used']} used, {counts['survival_only']} for "
          f"survival only, {counts['excluded']} excluded (why: {args.output}/import_report.md)")
    for line in report.missing:
        print(f"  missing: {line}")
    print(f"wrote {args.output}/manifest.csv, survival.csv, import_report.json, import_report.md")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Plan (and unless --dry-run, run) the download of what the importer needs."""
    from TACEResponseLib.imaging.idc_download import download, plan_download

    plan = plan_download()
    print(plan.describe())
    if args.dry_run:
        return 0
    download(plan, args.folder, progress=not args.no_progress)
    print(f"downloaded into {args.folder}; next: tace-response cohort import hcc-tace-seg {args.folder} "
          "--clinical HCC-TACE-Seg_clinical_data-V2.xlsx --output OUT")
    return 0


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", choices=COLLECTIONS, help="which collection SOURCE holds")
    p.add_argument("source", metavar="SOURCE_DIR", help="the folder the collection was downloaded or unpacked to")
    p.add_argument("--output", required=True, help="folder for manifest.csv, survival.csv and import_report.json/.md")
    p.add_argument("--clinical", default=None, metavar="FILE",
                   help="the collection's clinical workbook or CSV (default: the one found in SOURCE_DIR)")
    p.add_argument("--sheet", default=None, help="the workbook's sheet (default: the one holding the patient ids)")
    p.add_argument("--reader", choices=["majority", "1", "2", "3"], default="majority",
                   help="hcc-tace-seg: whose mRECIST reading is the label (default: two of three readers agree, "
                        "otherwise reader 1)")
    p.add_argument("--ai-segs", action="store_true",
                   help="hcc-tace-seg: use an AI SEG where a patient has no radiologist SEG (not ground truth)")
    p.add_argument("--time-unit", choices=["days", "weeks", "months"], default=None,
                   help="unit of the workbook's survival times (default: weeks for hcc-tace-seg, days for waw-tace, "
                        "as the collections describe them); kept in the column names")
    p.add_argument("--response-column", default=None,
                   help="waw-tace: the workbook's treatment-response column (default: the one named like 'response')")


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", choices=["hcc-tace-seg"], help="the collection (IDC hosts HCC-TACE-Seg)")
    p.add_argument("folder", metavar="DIR", help="download folder (a partial download there resumes)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (patients, series, GB) and stop")
    p.add_argument("--no-progress", action="store_true")


COMMANDS = [
    Command("import", cmd_import, _import_args,
            "turn a downloaded HCC-TACE-Seg or WAW-TACE collection into manifest.csv + survival.csv + report",
            group="cohort"),
    Command("download", cmd_download, _download_args,
            "download from IDC what the HCC-TACE-Seg import needs (pre-TACE CT + radiologist SEGs; --dry-run: the plan)",
            group="cohort"),
]
