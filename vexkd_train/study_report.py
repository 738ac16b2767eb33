"""The mask study's part of results.md: each row of the study's tables as a paired difference
from its baseline with a 95 % interval and the minimum detectable difference (vexkd_train.paired),
on each world the checkpoints were evaluated on; and how much of the seed-to-seed spread is
evaluation noise (the same checkpoints' spread on a 16-, 64- and 512-sample val split).
"""
from __future__ import annotations

import math
import statistics

from vexkd_train.paired import paired_difference, seeds_needed

METRICS = ("mAP", "NDS", "mIoU")
TITLES = {"study-lidar": "LiDAR student: mask choice and what is cross-modal",
          "study-camera": "Camera student (detection): mask choice"}
TARGET = 0.02  # the minimum detectable difference the study is sized for (mAP and mIoU)


def study_worlds(results: dict) -> dict[str, dict]:
    """World label -> {"tables", "val_samples"} of the study's tables, the untouched test world first."""
    worlds = {}
    for label, entry in (("test world", results.get("test")), ("held-out world", results.get("heldout"))):
        if entry is not None:
            worlds[label] = {"tables": entry["tables"], "val_samples": entry.get("val_samples")}
    worlds["training world's val"] = {"tables": results["tables"], "val_samples": results.get("val_samples")}
    return {label: world for label, world in worlds.items()
            if any(table in world["tables"] for table in TITLES)}


def gains(rows: dict) -> dict[str, dict[str, dict]]:
    """Row label -> metric -> the row's paired difference from its baseline (as a dict), for
    every row with a baseline and that metric."""
    found = {}
    for label, entry in rows.items():
        base = rows.get(entry.get("baseline") or "")
        if base is None:
            continue
        found[label] = {metric: paired_difference(entry[metric]["values"], base[metric]["values"]).to_dict()
                        for metric in METRICS if entry[metric] is not None and base[metric] is not None}
    return found


def study_sections(results: dict) -> list[str]:
    worlds = study_worlds(results)
    if not worlds:
        return []
    lines = ["# Mask study", "",
             "Each row against its table's no-FD row, seed by seed (students of a seed share initialisation "
             "and data order): the mean gain, its 95 % interval, and the minimum detectable difference (MDD: "
             "a true gain this large is found with 80 % power at the 5 % level). A row whose interval holds 0 "
             "shows no difference; that is not evidence of none when its MDD is large. mAP and NDS come from "
             "detection students, mIoU from map students (a model per task). docs/mask_study.md reads them.", "",
             "![Gains over no FD with 95 % intervals and the minimum detectable difference](study_gains.png)", ""]
    for world, entry in worlds.items():
        for table, title in TITLES.items():
            if table in entry["tables"]:
                lines += _gain_table(f"## {title}, {world}", entry["tables"][table])
    return lines + _noise_table(worlds)


def _gain_table(title: str, rows: dict) -> list[str]:
    seeds = max(entry["seeds"] for entry in rows.values())
    found = gains(rows)
    lines = [f"{title} ({seeds} seed{'s' if seeds > 1 else ''})", "",
             "| row | " + " | ".join(f"{metric} | gain [95 % interval], MDD" for metric in METRICS) + " |",
             "|---" * (1 + 2 * len(METRICS)) + "|"]
    for label, entry in rows.items():
        cells = []
        for metric in METRICS:
            if entry[metric] is None:
                cells += ["-", "-"]
                continue
            difference = found.get(label, {}).get(metric)
            cells += [f"{entry[metric]['mean']:.4f}", _gain_cell(difference) if difference else ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _gain_cell(difference: dict) -> str:
    text = f"{difference['mean']:+.4f}"
    if math.isnan(difference["low"]):
        return text
    shown = "**" if difference["low"] > 0 or difference["high"] < 0 else ""
    return (f"{shown}{text} [{difference['low']:+.4f}, {difference['high']:+.4f}]{shown}, "
            f"{difference['detectable']:.4f}")


def _noise_table(worlds: dict[str, dict]) -> list[str]:
    """Per world and metric: the median over rows of a row's spread over seeds (sample std) and
    of a gain's; and the seeds a gain's median spread needs for an MDD of TARGET."""
    lines = ["## How much of the spread is evaluation noise", "",
             "The same checkpoints on val splits of three sizes: the part of the seed-to-seed spread that "
             "shrinks with more val samples is evaluation noise; what stays is training noise. Median over "
             "the study's rows (all tables) of the sample standard deviation over seeds.", "",
             "| world | val samples | " + " | ".join(f"{metric}: row sd / gain sd / seeds for MDD {TARGET}"
                                                    for metric in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for world, entry in worlds.items():
        row_sd = {metric: [] for metric in METRICS}
        gain_sd = {metric: [] for metric in METRICS}
        for table in TITLES:
            rows = entry["tables"].get(table, {})
            for row in rows.values():
                for metric in METRICS:
                    if row[metric] is not None and len(row[metric]["values"]) > 1:
                        row_sd[metric].append(statistics.stdev(row[metric]["values"]))
            for differences in gains(rows).values():
                for metric, difference in differences.items():
                    if not math.isnan(difference["sd"]):
                        gain_sd[metric].append(difference["sd"])
        cells = []
        for metric in METRICS:
            if not gain_sd[metric]:
                cells.append("-")
                continue
            typical = statistics.median(gain_sd[metric])
            needed = seeds_needed(typical, TARGET)
            cells.append(f"{statistics.median(row_sd[metric]):.4f} / {typical:.4f} / "
                         f"{needed if needed is not None else '> 200'}")
        lines.append(f"| {world} | {entry['val_samples'] or '?'} | " + " | ".join(cells) + " |")
    return lines + [""]
