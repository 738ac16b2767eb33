"""The mask study's part of results.md: each row of the study's tables as a paired difference
from its baseline with a 95 % interval and the minimum detectable difference (vexkd_train.paired),
on each world the checkpoints were evaluated on; and how much of the seed-to-seed spread is
evaluation noise (the same checkpoints' spread on a 16-, 64- and 512-sample val split, and
between parts of the test world's: vexkd_train.world_parts).
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from vexkd_train.paired import holm, paired_difference, seeds_needed

METRICS = ("mAP", "NDS", "mIoU")
TITLES = {"study-lidar": "LiDAR student: mask choice and what is cross-modal",
          "study-camera": "Camera student (detection): mask choice",
          "study-map-teacher": "LiDAR map student from a map-only teacher"}
TARGET = 0.02  # the minimum detectable difference the study is sized for (mAP and mIoU)
VEXKD, WHOLE_MAP, RANDOM_QUERY = "generated, fusion query (VeXKD)", "whole map", "generated, random query"
# The study's questions (docs/mask_study.md): (table, metric, row, against, what it asks), each
# family judged together on the test world by Holm. The first was fixed before the study's first
# distilled student trained; the second after seed 2, when the multi-task teacher was found to map
# worse than the map-only students, before any student of the map-only teacher trained.
QUESTIONS = {
    "The study's questions": (
        ("study-camera", "mAP", VEXKD, WHOLE_MAP, "do masks beat the whole map where the teacher knows far more?"),
        ("study-lidar", "mIoU", VEXKD, WHOLE_MAP, "do masks beat the whole map for the LiDAR student's map?"),
        ("study-lidar", "mIoU", VEXKD, RANDOM_QUERY, "does the teacher's query make better masks than a random one?"),
        ("study-lidar", "mAP", WHOLE_MAP, "self-distillation: whole map from a LiDAR-only teacher",
         "is the LiDAR student's detection gain cross-modal, more than self-distillation gives?")),
    "The map-only teacher's questions": (
        ("study-map-teacher", "mIoU", WHOLE_MAP, "no FD", "does a map-only teacher's whole map help the map student?"),
        ("study-map-teacher", "mIoU", VEXKD, WHOLE_MAP, "with a map-only teacher, do masks beat the whole map?"),
        ("study-map-teacher", "mIoU", VEXKD, RANDOM_QUERY,
         "with a map-only teacher, does its query make better masks than a random one?"),
        ("study-map-teacher", "mIoU", WHOLE_MAP, "self-distillation: whole map from a LiDAR-only map model",
         "is the map gain cross-modal, more than self-distillation gives?")),
}


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
             "detection students, mIoU from map students (a model per task; latency, parameters and s/step "
             "are the detection student's where a row has one). Bold: the cell's own interval excludes 0; "
             "with some thirty cells a table shows one or two such by chance, so the study's questions are "
             "the primary comparisons below, each family judged together. docs/mask_study.md reads them.", "",
             "![Gains over no FD with 95 % intervals and the minimum detectable difference](study_gains.png)", ""]
    for family, questions in QUESTIONS.items():
        lines += _primary_table(family, questions, *next(iter(worlds.items())))
    for world, entry in worlds.items():
        for table, title in TITLES.items():
            if table in entry["tables"]:
                lines += _gain_table(f"## {title}, {world}", entry["tables"][table])
    lines += _noise_table(worlds)
    test = results.get("test")
    return lines + (_within_world_table(test) if test is not None and test.get("parts") else [])


def primary_comparisons(tables: dict[str, dict], questions: tuple[tuple[str, ...], ...]) -> list[dict]:
    """The comparisons of `questions` (a family of QUESTIONS) that `tables` hold, each a paired
    difference with `shown`: Holm's verdict over those of them that have p-values."""
    found = []
    for table, metric, row, against, question in questions:
        rows = tables.get(table, {})
        if row in rows and against in rows and rows[row][metric] is not None:
            difference = paired_difference(rows[row][metric]["values"], rows[against][metric]["values"]).to_dict()
            found.append({"table": table, "metric": metric, "row": row, "against": against, "question": question,
                          **difference})
    for comparison, shown in zip(found, holm([comparison["p_value"] for comparison in found], size=len(questions))):
        comparison["shown"] = shown
    return found


def _primary_table(family: str, questions: tuple, world: str, entry: dict) -> list[str]:
    comparisons = primary_comparisons(entry["tables"], questions)
    if not comparisons:
        return []
    seeds = comparisons[0]["seeds"]
    lines = [f"## {family}, {world} ({seeds} seed{'s' if seeds > 1 else ''})", "",
             f"Each a paired difference; shown: a difference under Holm's correction over the {len(questions)} "
             "questions of this family (family-wise 5 %).", "",
             "| question | table, metric | difference | 95 % interval | MDD | p | shown |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        interval = "-" if math.isnan(c["low"]) else f"[{c['low']:+.4f}, {c['high']:+.4f}]"
        detectable = "-" if math.isnan(c["detectable"]) else f"{c['detectable']:.4f}"
        p_value = "-" if math.isnan(c["p_value"]) else f"{c['p_value']:.3f}"
        lines.append(f"| {c['question']} ({c['row']} - {c['against']}) | {c['table']}, {c['metric']} | "
                     f"{c['mean']:+.4f} | {interval} | {detectable} | {p_value} | {'yes' if c['shown'] else 'no'} |")
    return lines + [""]


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
             "The same checkpoints on the val splits of three worlds of 16, 64 and 512 samples: the part of the "
             "seed-to-seed spread that shrinks with more val samples is evaluation noise; what stays is training "
             "noise. The worlds differ in more than size (their scenes, and so how hard they are), so this "
             "reads the size's effect only roughly. Median over the study's rows (all tables) of the sample "
             "standard deviation over seeds.", "",
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


def evaluation_noise(world: dict) -> dict[str, dict[str, float]]:
    """Per metric, the median over the study's rows (each against its baseline) of a gain's
    spread, from its values g[seed, part] on the parts of the val split (checkpoints fixed):
    - between_seeds: the sd between seeds of the gain on the whole split;
    - shared: the sd between parts of the seeds' mean gain: parts that suit the row more or
      less, alike for every seed, so they move no seed against another; over sqrt(parts) it
      is the sampling error of the mean gain from this split's size (`sampling`);
    - interaction: the sd of what is left, g less its seed's and its part's means (a two-way
      table's residual, (S - 1)(P - 1) degrees of freedom): a checkpoint doing better on
      some scenes than another seed's checkpoint does. Only this evaluation noise reaches
      the spread between seeds: interaction^2 / parts of its variance (`share`, NaN with one
      seed).
    Approximate: it takes a whole-split metric for the mean of its parts', which mAP and NDS
    (nonlinear; a class absent from a part scores 0 for both checkpoints) and mIoU (its best
    threshold chosen per part) are not exactly."""
    parts = world["parts"]
    found: dict[str, list[dict[str, float]]] = {metric: [] for metric in METRICS}
    for table in TITLES:
        rows = world["tables"].get(table, {})
        for label, entry in rows.items():
            base = rows.get(entry.get("baseline") or "")
            for metric in METRICS:
                if base is None or entry[metric] is None or base[metric] is None:
                    continue
                gains = np.array([_seed_gains(part["tables"][table], label, metric) for part in parts]).T
                found[metric].append(_gain_spread(gains, _seed_gains(rows, label, metric)))
    return {metric: {key: _median([row[key] for row in spreads]) for key in spreads[0]}
            for metric, spreads in found.items() if spreads}


def _gain_spread(gains: np.ndarray, whole: list[float]) -> dict[str, float]:
    """evaluation_noise's figures of one row: `gains` (seeds, parts), `whole` its gains on the
    whole split, seed by seed."""
    seeds, parts = gains.shape
    shared = float(np.std(gains.mean(axis=0), ddof=1))
    between_seeds = statistics.stdev(whole) if seeds > 1 else math.nan
    interaction = math.nan
    if seeds > 1:
        residual = gains - gains.mean(axis=1, keepdims=True) - gains.mean(axis=0, keepdims=True) + gains.mean()
        interaction = math.sqrt(float((residual ** 2).sum()) / ((seeds - 1) * (parts - 1)))
    share = interaction ** 2 / parts / between_seeds ** 2 if between_seeds > 0 else math.nan
    return {"between_seeds": between_seeds, "shared": shared, "sampling": shared / math.sqrt(parts),
            "interaction": interaction, "share": share}


def _median(values: list[float]) -> float:
    known = [value for value in values if not math.isnan(value)]
    return statistics.median(known) if known else math.nan


def _seed_gains(rows: dict, label: str, metric: str) -> list[float]:
    """The row's gain over its baseline, seed by seed."""
    row, base = rows[label][metric]["values"], rows[rows[label]["baseline"]][metric]["values"]
    return [value - baseline for value, baseline in zip(row, base)]


def _within_world_table(world: dict) -> list[str]:
    parts, samples = len(world["parts"]), world.get("val_samples")
    noise = evaluation_noise(world)
    if not noise:
        return []
    lines = ["## Evaluation noise inside the test world", "",
             f"The test world's val split cut into {parts} parts of whole scenes"
             f"{f' (about {samples // parts} samples each)' if samples else ''}, every checkpoint scored on each "
             "part from its evaluation of the whole split, and each row's gain taken apart as a two-way table "
             "(seeds x parts): how much the gain moves between parts alike for every seed (over "
             f"sqrt({parts}): the sampling error of a mean gain from a split of this size), and how much a "
             "checkpoint's gain moves between parts unlike another seed's (the seed x part interaction, the "
             "only evaluation noise in the spread between seeds: its share of the seed variance). Median over "
             "the study's rows; approximate, as a whole-split mAP or mIoU is not exactly the mean of its parts'.",
             "",
             "| metric | gain sd between seeds (whole split) | between parts, alike for all seeds | its sampling "
             "error in a whole-split mean gain | seed x part sd | evaluation noise's share of the seed variance |",
             "|---|---|---|---|---|---|"]
    for metric, entry in noise.items():
        cells = [_figure(entry["between_seeds"]), _figure(entry["shared"]), _figure(entry["sampling"]),
                 _figure(entry["interaction"]),
                 "-" if math.isnan(entry["share"]) else f"{100 * entry['share']:.0f} %"]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines + [""]


def _figure(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"
