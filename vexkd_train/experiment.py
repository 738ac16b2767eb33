"""`vexkd-train experiment`: the paper's comparison and ablation tables, end to end.

A suite (experiment_plan) names the tables; the runs they need are trained and evaluated as
stages (experiment_runs), so an interrupted experiment resumes where it stopped. Then
results.json, results.md (experiment_report) and pictures. `make demo` is the `demo` suite
of this runner plus its replay (vexkd_train.demo).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.config import Config, load_config
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from vexkd_train.experiment_plan import (FUSER_LABELS, HELDOUT_TABLES, SENSOR_CASES, STUDY_TABLES, SUITES,
                                         UNUSED_SEED, MaskRun, Student, TABLES, Suite, Teacher, tables)
from vexkd_train.experiment_report import markdown, summarise, summarised
from vexkd_train.experiment_runs import Runs
from vexkd_train.mask_reports import measure_agreement
from vexkd_train.masks import load_masks
from vexkd_train.stages import Stages

# The comparison's students by their label in the pictures.
PICTURED = (("LiDAR", Student("lidar")), ("LiDAR+VeXKD", Student("lidar", "vexkd")), ("camera", Student("camera")),
            ("camera+VeXKD", Student("camera", "vexkd")))
# The generators whose selectivity report results.md shows, when the tables use them.
SELECTIVITY_SHOWN = {"fusion query (VeXKD)": MaskRun(), "random query": MaskRun(query="random"),
                     "fused map as query": MaskRun(query="fused"),
                     "fusion query (VeXKD) of the map-only teacher": MaskRun(teacher_tasks="map"),
                     "random query of the map-only teacher": MaskRun(query="random", teacher_tasks="map")}


@dataclass(frozen=True)
class ExtraEvaluations:
    """What a student's run is also evaluated on (picklable: side-by-side processes run it):
    the training split for the comparison's rows, the held-out world for HELDOUT_TABLES' rows,
    the study's test world (whole and in parts) for the study's rows. Then everything measured
    of it goes to the ledger, if the runs keep one. `trained_here`: students whose checkpoints
    are needed (teachers start from them, pictures show them), trained whatever the ledger holds."""

    on_training_split: frozenset[Student]
    on_heldout: frozenset[Student]
    heldout: Path | None
    on_test: frozenset[Student] = frozenset()
    test: Path | None = None
    trained_here: frozenset[Student] = frozenset()

    def evaluated_on(self, runs: Runs, student: Student) -> dict[str, Path]:
        """{tag: world} of the student's evaluations beyond its val split."""
        worlds = {}
        if student in self.on_training_split:
            worlds["training_split"] = runs.dataroot
        if student in self.on_heldout:
            worlds["heldout"] = self.heldout
        if student in self.on_test:
            worlds["test"] = self.test
        return worlds

    def __call__(self, runs: Runs, student: Student) -> dict:
        name, worlds = runs.name(student), self.evaluated_on(runs, student)
        metrics = runs.student(student, need_checkpoint=student in self.trained_here, evaluated_on=worlds)
        results = {"metrics": {key: value for key, value in metrics.items() if key != "step_seconds"},
                   "step_seconds": metrics["step_seconds"]}
        if "training_split" in worlds:
            results["training_split"] = runs.training_split_metrics(name)
        if "heldout" in worlds:
            results["heldout"] = runs.world_metrics(name, worlds["heldout"], "heldout")
        if "test" in worlds:
            results["test"] = runs.world_metrics(name, worlds["test"], "test")
            results["test_parts"] = runs.world_part_metrics(name, worlds["test"], "test")
        runs.keep_in_ledger(student, results, worlds)
        return metrics


class Experiment:
    def __init__(self, dataroot: Path, version: str, out: Path, config: Config, suite: Suite, progress: bool = True,
                 heldout: Path | None = None, stages: Stages | None = None, test_world: Path | None = None,
                 ledger: Path | None = None):
        if config.train.tasks != "both":
            raise ValueError(f"the experiment's tables report detection and map together: it needs train.tasks=both, "
                             f"not {config.train.tasks}")
        self.out, self.suite, self.progress, self.heldout, self.test_world = out, suite, progress, heldout, test_world
        self.plan = tables(suite.seeds, suite.ablation_seeds, suite.tables, suite.per_task)
        if suite.short_names:
            students = {student for rows in self.plan.values() for _, student in rows}
            if len({student.short_name for student in students}) < len(students):
                raise ValueError("short run names need one student of each modality and distillation")
        self.runs = Runs(dataroot, version, out, config, suite, progress, stages=stages, ledger=ledger)

    def students(self) -> list[Student]:
        """Every student of the tables, once, seed by seed: the first seed's tables complete first."""
        return sorted(dict.fromkeys(student for rows in self.plan.values() for _, student in rows),
                      key=lambda student: student.seed)

    def _fusers(self) -> tuple[str, ...]:
        """The teachers the tables distil from: the ConvFuser only for the fuser comparison."""
        return tuple(FUSER_LABELS) if "fusers" in self.plan else ("mgfm",)

    def _teachers(self) -> list[Teacher]:
        """Every teacher the tables need."""
        distilled = [student.teacher for student in self.students() if student.distill != "none"]
        return list(dict.fromkeys([Teacher(fuser) for fuser in self._fusers()] + distilled))

    def extra_evaluations(self) -> ExtraEvaluations:
        comparison = frozenset(student for _, student in self.plan.get("comparison", [])) \
            if self.suite.training_split else frozenset()
        heldout = frozenset(student for table in HELDOUT_TABLES for _, student in self.plan.get(table, [])) \
            if self.heldout is not None else frozenset()
        test = frozenset(student for table in STUDY_TABLES for _, student in self.plan.get(table, [])) \
            if self.test_world is not None else frozenset()
        return ExtraEvaluations(comparison, heldout, self.heldout, test, self.test_world, self._trained_here())

    def _trained_here(self) -> frozenset[Student]:
        """Students whose checkpoints this run needs: the teachers' starts and the pictured students."""
        starts = {teacher.start for teacher in self._teachers()}
        return frozenset(starts | ({student for _, student in self._pictured()} if "comparison" in self.plan else set()))

    def _pictured(self) -> list[tuple[str, Student]]:
        """The comparison's students the pictures show; a per-task suite's are its detection students."""
        return [(label, replace(student, tasks="detection") if self.suite.per_task else student)
                for label, student in PICTURED]

    def train(self, jobs: int = 1) -> None:
        """Every run of the tables. With `jobs` > 1: the baselines side by side (they need
        nothing), then the teachers and mask generators in this process, then the distilled
        students side by side."""
        students, task = self.students(), self.extra_evaluations()
        if jobs > 1:
            self.runs.in_processes([s for s in students if s.distill == "none"], jobs, task)
        for teacher in self._teachers():
            self.runs.teacher(teacher)
        for run in dict.fromkeys(student.masks for student in students if student.masks):
            self.runs.masks(run)
        if jobs > 1:
            self.runs.in_processes([s for s in students if s.distill != "none"], jobs, task)
        for student in students:
            task(self.runs, student)

    def run(self, jobs: int = 1) -> dict:
        """Trains what is missing, then writes results.json, results.md and the pictures."""
        self.train(jobs)
        runs = self.runs
        results = {"teacher": summarise([runs.metrics("teacher")]),
                   "other_teachers": {teacher.name: summarise([runs.metrics(teacher.name)])
                                      for teacher in self._teachers() if teacher != Teacher()},
                   "tables": {table: summarised(rows, runs.student) for table, rows in self.plan.items()}}
        if self.suite.training_split:
            fitted = summarised(self.plan.get("comparison", []),
                                lambda student: runs.training_split_metrics(runs.name(student)))
            results["training_split"] = {"teacher": summarise([runs.training_split_metrics("teacher")]), **fitted}
        val = NuScenesSource(runs.dataroot, runs.version, "val", 0, nusc=runs.train_source.nusc)
        results["val_objects"], results["val_samples"] = val.objects_per_class(), len(val)
        used = {student.masks for student in self.students()}
        results["selectivity"] = {label: json.loads((runs.folder(runs.name(run)) / "selectivity.json").read_text())
                                  for label, run in SELECTIVITY_SHOWN.items() if run in used}
        if "masks" in self.plan:
            results["mask_agreement"] = self.mask_agreement()
        if "fusers" in self.plan:
            results["robustness"] = self.robustness()
        if self.heldout is not None:
            results["heldout"] = self.world_results(self.heldout, "heldout", HELDOUT_TABLES)
        if self.test_world is not None and any(table in self.plan for table in STUDY_TABLES):
            results["test"] = self.world_results(self.test_world, "test", STUDY_TABLES)
            results["test"]["parts"] = self.world_parts(self.test_world, "test", STUDY_TABLES)
        atomic_write_json(self.out / "results.json", results)
        self.pictures(results)
        atomic_write_text(self.out / "results.md", markdown(results))
        return results

    def mask_agreement(self) -> dict[str, dict]:
        """How alike the fusion-query and the random-query generators' masks are on val: the
        ablation only tests the query if they differ (it runs the teacher over val)."""
        runs = self.runs
        teacher_path = runs.teacher()
        fusion_path, random_path = (runs.masks(run) for run in (MaskRun(), MaskRun(query="random")))
        spec = {"teacher": runs.stamp(teacher_path), "fusion_query": runs.stamp(fusion_path),
                "random_query": runs.stamp(random_path), "data": runs.identity(runs.dataroot), "code": runs.code}

        def measure() -> dict:
            teacher, _, _ = model_from_checkpoint(teacher_path, expected_modality="fusion")
            fusion, random = (load_masks(path, teacher) for path in (fusion_path, random_path))
            return measure_agreement(freeze(teacher), fusion, random, runs.val_source(), progress=self.progress)

        return runs.stages.kept("mask agreement", spec, self.out / "runs" / "mask-agreement.json", measure)

    def robustness(self) -> dict[str, dict]:
        """Each teacher on val with both sensors, LiDAR only and camera only: a fuser that leans
        on one sensor collapses without it."""
        runs = self.runs
        for fuser in FUSER_LABELS:
            runs.teacher(Teacher(fuser))
        return {FUSER_LABELS[fuser]: {
            label: summarise([runs.evaluation(Teacher(fuser).name, runs.dataroot, "val", f"val_without_{dropped}",
                                              dropped) if dropped else runs.metrics(Teacher(fuser).name)])
            for label, dropped in SENSOR_CASES.items()} for fuser in FUSER_LABELS}

    def world_results(self, world: Path, tag: str, shown: tuple[str, ...]) -> dict:
        """Teacher and the rows of the `shown` tables on the val split of a second world (the
        held-out world: more objects per class than one small val split gives; the study's
        test world)."""
        runs = self.runs
        held = {"dataroot": str(world), "teacher": summarise([runs.world_metrics("teacher", world, tag)]),
                "other_teachers": {teacher.name: summarise([runs.world_metrics(teacher.name, world, tag)])
                                   for teacher in self._teachers() if teacher != Teacher()},
                "tables": {}}
        for table in shown:
            if table in self.plan:
                held["tables"][table] = summarised(self.plan[table], lambda student: runs.world_metrics(
                    runs.name(student), world, tag))
        val = NuScenesSource(world, runs.version, "val", 0)
        held["val_objects"], held["val_samples"] = val.objects_per_class(), len(val)
        return held

    def world_parts(self, world: Path, tag: str, shown: tuple[str, ...]) -> list[dict]:
        """The rows of the `shown` tables on each part of a world's val split (world_parts), one
        {"tables"} per part: how far the same checkpoints' gains move by evaluation alone. No
        parts ([]) for a world of one val scene (no spread between parts)."""
        runs = self.runs
        names = sorted({runs.name(student) for table in shown for _, student in self.plan.get(table, [])})
        by_run = {name: runs.world_part_metrics(name, world, tag) for name in names}
        count = min(map(len, by_run.values()), default=0)
        if count < 2:
            return []
        return [{"tables": {table: summarised(self.plan[table], lambda student: by_run[runs.name(student)][part])
                            for table in shown if table in self.plan}} for part in range(count)]

    def pictures(self, results: dict) -> None:
        """masks.png and features.png for the first val sample, with the comparison's students;
        robustness.png of the teachers with a sensor missing, with the fuser comparison; the
        study's gains (study_gains.png, on the test world when there is one) and the masks of
        each of its generator sets (masks_<mask run's name less "masks-">.png)."""
        from .pictures import gains_picture, robustness_picture, write_distillation_pictures, write_masks_pictures

        if "robustness" in results:
            atomic_write_bytes(self.out / "robustness.png", robustness_picture(results["robustness"]))
        study = {table: rows for table, rows in results.get("test", results)["tables"].items()
                 if table in STUDY_TABLES}
        if study:
            world = "test world" if "test" in results else "val"
            atomic_write_bytes(self.out / "study_gains.png", gains_picture(study, world))
            runs = self.runs
            by_teacher: dict[Teacher, dict[str, Path]] = {}  # generators load only with their own teacher
            for run in dict.fromkeys(student.masks for student in self.students() if student.masks):
                by_teacher.setdefault(run.teacher, {})[run.name.removeprefix("masks-")] = runs.masks(run)
            for teacher, generators in by_teacher.items():
                write_masks_pictures(runs.dataroot, runs.version, runs.teacher(teacher), generators, self.out,
                                     nusc=runs.train_source.nusc)
        if "comparison" not in results["tables"]:
            return
        runs = self.runs
        students = {label: runs.checkpoint(runs.name(student)) for label, student in self._pictured()}
        write_distillation_pictures(runs.dataroot, runs.version, runs.teacher(), runs.masks(MaskRun(blocks=3)),
                                    students, self.out, nusc=runs.train_source.nusc)


def run_experiment(dataroot: Path, version: str, out: Path, suite_name: str, config_name: str = "tiny",
                   overrides: list[str] = (), progress: bool = True, seeds: tuple[int, ...] | None = None,
                   ablation_seeds: tuple[int, ...] | None = None, heldout: Path | None = None, jobs: int = 1,
                   only: tuple[str, ...] | None = None, test_world: Path | None = None,
                   ledger: Path | None = None) -> dict:
    """Run a suite; `seeds` replaces the suite's seeds and `ablation_seeds` those of the blocks and
    distance tables (default: `seeds`). Finished runs of other seeds stay reusable. `heldout`: a
    second dataset whose val split the main tables' checkpoints are also evaluated on. `jobs`:
    students trained side by side. `only`: run these tables (of TABLES) and what they need. `ledger`:
    a folder of finished students to reuse and add to (vexkd_train.ledger): a suite resumes on
    another machine."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if suite_name not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, not '{suite_name}'")
    suite = SUITES[suite_name]
    if seeds is not None:
        suite = replace(suite, seeds=tuple(seeds))
    if ablation_seeds is not None:
        suite = replace(suite, ablation_seeds=tuple(ablation_seeds))
    if not suite.seeds or suite.ablation_seeds == ():
        raise ValueError("at least one seed is needed")
    if UNUSED_SEED in suite.seeds + (suite.ablation_seeds or ()):
        raise ValueError(f"seed {UNUSED_SEED} starts the study's second teacher: no student may use it")
    if only is not None:
        unknown = [name for name in only if name not in TABLES]
        if unknown or not only:
            raise ValueError(f"tables are among {', '.join(TABLES)}, not {', '.join(unknown) or 'none'}")
        suite = replace(suite, tables=tuple(dict.fromkeys(only)))
    return Experiment(dataroot, version, out, load_config(config_name, overrides), suite, progress, heldout,
                      test_world=test_world, ledger=ledger).run(jobs)
