"""`vexkd-train experiment`: the paper's comparison and ablation tables, end to end.

Trains and evaluates the LiDAR student, the camera student, the teacher (started from the
LiDAR student, BEVFusion's practice), the mask generators and every distilled student the
tables need, then writes results.json, results.md and pictures. Each run lives in its own
folder with the spec it was made from: its settings, the identity of the dataset on disk and
the stamps of the checkpoints it started from. A finished run (metrics.json present, same
spec) is reused, so an interrupted experiment resumes where it stopped, and a rewritten
dataset or a retrained teacher redoes what depended on it.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.config import Config, load_config
from vexkd_core.data.dataset import model_source
from vexkd_core.data.nuscenes_source import NuScenesSource
from vexkd_core.distill.distiller import freeze
from vexkd_core.fingerprint import dataset_identity, file_stamp
from vexkd_core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from vexkd_core.models.vexkd import initial_model
from vexkd_train.evaluate import evaluate
from vexkd_train.experiment_plan import (FUSER_LABELS, HELDOUT_TABLES, SENSOR_CASES, SUITES, MaskRun, Student,
                                         TABLES, Suite, tables)
from vexkd_train.experiment_report import markdown, summarise, summarised
from vexkd_train.masks import MASKS_FORMAT, MaskSettings, load_masks, measure_agreement, train_masks
from vexkd_train.trainer import RunOptions, train
from vexkd_train.training_setup import build_distiller, initialise_from_lidar


# In a distilled student's spec, so runs trained before a fix to distilled training are redone
# rather than reused. 2: the student's parameters are stepped once per step (before, the
# distiller also held them, and AdamW stepped them twice: twice the learning rate).
DISTILLED_TRAINING_REVISION = 2


def _spec(value: dict) -> dict:
    """As it is stored: through JSON, so tuples compare equal to their saved lists."""
    return json.loads(json.dumps(value))


class Experiment:
    def __init__(self, dataroot: Path, version: str, out: Path, config: Config, suite: Suite, progress: bool = True,
                 heldout: Path | None = None, inputs_ready: bool = False):
        """`inputs_ready`: the teachers and mask generators are trained already (the side-by-side
        runs' processes, which must never train them, as two could at once)."""
        if config.train.tasks != "both":
            raise ValueError(f"the experiment's tables report detection and map together: it needs train.tasks=both, "
                             f"not {config.train.tasks}")
        self.dataroot, self.version, self.out, self.heldout = dataroot, version, out, heldout
        self.config, self.suite, self.progress, self.inputs_ready = config, suite, progress, inputs_ready
        self.train_source = model_source(dataroot, version, "train", config, config.train.augment)
        # Each dataset's identity is taken once: the experiment's own reads leave the dataset as
        # it was, and taking it at every reuse check would hash its tables again each time.
        self.identities: dict[Path, str] = {}

    def _identity(self, dataroot: Path) -> str:
        """The dataset's identity on disk (vexkd_core.fingerprint): it changes when it is rewritten."""
        if dataroot not in self.identities:
            self.identities[dataroot] = dataset_identity(dataroot, self.version)
        return self.identities[dataroot]

    def _stamp(self, path: Path) -> list:
        """An input checkpoint's stamp, its path relative to `out` so a moved experiment stays reusable."""
        return file_stamp(path, root=self.out)

    def _checkpoint(self, name: str) -> Path:
        return self.out / "runs" / name / "train" / "model.pt"

    def _schedule(self) -> dict:
        """What shapes one run; the seed list is left out so adding seeds reuses finished runs."""
        return {"epochs": self.suite.epochs, "mask_epochs": self.suite.mask_epochs, "max_steps": self.suite.max_steps}

    def _options(self, folder: Path) -> RunOptions:
        return RunOptions(folder, max_epochs=self.suite.epochs, max_steps=self.suite.max_steps, progress=self.progress)

    def _done(self, folder: Path, spec: dict, output: str = "metrics.json") -> bool:
        """The run's output exists and was made from this very spec."""
        return (folder / output).is_file() and (folder / "spec.json").is_file() and \
            json.loads((folder / "spec.json").read_text()) == spec

    def _finish(self, folder: Path, spec: dict, checkpoint: Path) -> dict:
        evaluate(checkpoint, self.dataroot, self.version, "val", folder / "eval", progress=self.progress)
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        atomic_write_json(folder / "metrics.json", metrics)
        atomic_write_json(folder / "spec.json", spec)
        return metrics

    def _student_spec(self, student: Student) -> dict:
        """A distilled student's spec holds its teacher's (and mask generators') stamps, so it
        is redone when they are retrained; asking for them finishes those runs first."""
        inputs = {}
        if student.distill != "none":
            inputs["teacher"] = self._stamp(self.teacher(student.fuser))
            inputs["distilled_training_revision"] = DISTILLED_TRAINING_REVISION
        if student.masks:
            inputs["masks"] = self._stamp(self.masks(student.masks))
        return _spec({"student": asdict(student), "schedule": self._schedule(), "config": self.config.to_dict(),
                      "data": self._identity(self.dataroot), "inputs": inputs})

    def _teacher_config(self, fuser: str) -> Config:
        return replace(self.config, model=replace(self.config.model, fuser=fuser))

    def _teacher_spec(self, fuser: str = "mgfm") -> dict:
        """Needs the LiDAR baseline's checkpoint (the teacher starts from it): teacher() makes it first."""
        return _spec({"teacher": "init from lidar-baseline-s0", "schedule": self._schedule(),
                      "config": self._teacher_config(fuser).to_dict(), "data": self._identity(self.dataroot),
                      "inputs": {"lidar": self._stamp(self._checkpoint(Student("lidar").name))}})

    def student(self, student: Student) -> dict:
        folder = self.out / "runs" / student.name
        spec = self._student_spec(student)
        if self._done(folder, spec):
            return json.loads((folder / "metrics.json").read_text())
        config = replace(self.config, train=replace(self.config.train, seed=student.seed))
        if not student.depth_supervision:
            config = replace(config, model=replace(config.model, camera=replace(config.model.camera,
                                                                               depth_loss_weight=0.0)))
        model = initial_model(config, student.modality)
        distiller = None
        if student.distill != "none":
            distiller = build_distiller(self.teacher(student.fuser), model, student.distill, student.levels,
                                        student.loss, {"low": 1.0, "high": 1.0},
                                        self.masks(student.masks) if student.masks else None)
        checkpoint = train(model, config, self.train_source, student.modality, self._options(folder / "train"), distiller)
        return self._finish(folder, spec, checkpoint)

    @staticmethod
    def _teacher_name(fuser: str) -> str:
        return "teacher" if fuser == "mgfm" else f"teacher-{fuser}"

    def teacher(self, fuser: str = "mgfm") -> Path:
        name = self._teacher_name(fuser)
        folder = self.out / "runs" / name
        self.student(Student("lidar"))
        spec = self._teacher_spec(fuser)
        if not self._done(folder, spec):
            self._refuse_shared_training(name)
            config = self._teacher_config(fuser)
            teacher = initial_model(config, "fusion")
            initialise_from_lidar(teacher, self._checkpoint(Student("lidar").name))
            self._finish(folder, spec, train(teacher, config, self.train_source, "fusion",
                                             self._options(folder / "train")))
        return self._checkpoint(name)

    def masks(self, run: MaskRun) -> Path:
        folder = self.out / "runs" / run.name
        settings = MaskSettings(blocks=run.blocks, random_query=run.random_query, epochs=self.suite.mask_epochs)
        teacher = self.teacher()
        spec = _spec({"masks": asdict(settings), "format": MASKS_FORMAT, "data": self._identity(self.dataroot),
                      "inputs": {"teacher": self._stamp(teacher)}})
        if not self._done(folder, spec, "masks.pt"):
            self._refuse_shared_training(run.name)
            train_masks(teacher, self.train_source, folder, settings, progress=self.progress,
                        report_source=self._val_model_source())
            atomic_write_json(folder / "spec.json", spec)
        return folder / "masks.pt"

    def _refuse_shared_training(self, name: str) -> None:
        if self.inputs_ready:
            raise RuntimeError(f"{name} should have been trained before the students side by side")

    def selectivity(self) -> dict[str, dict]:
        """The selectivity report (on val) of the generators the mask-choice table uses."""
        return {label: json.loads((self.masks(run).parent / "selectivity.json").read_text())
                for label, run in (("fusion query (VeXKD)", MaskRun()), ("random query", MaskRun(random_query=True)))}

    def mask_agreement(self) -> dict[str, dict]:
        """How alike the fusion-query and the random-query generators' masks are on val: the
        ablation only tests the query if they differ. Kept in runs/mask-agreement.json while
        the teacher, both generators and the dataset stay the same (it runs the teacher over val)."""
        teacher_path = self.teacher()
        fusion_path, random_path = (self.masks(run) for run in (MaskRun(), MaskRun(random_query=True)))
        key = _spec({"teacher": self._stamp(teacher_path), "fusion_query": self._stamp(fusion_path),
                     "random_query": self._stamp(random_path), "data": self._identity(self.dataroot)})

        def measure() -> dict:
            teacher, _, _ = model_from_checkpoint(teacher_path, expected_modality="fusion")
            fusion, random = (load_masks(path, teacher) for path in (fusion_path, random_path))
            return measure_agreement(freeze(teacher), fusion, random, self._val_model_source(), progress=self.progress)

        return _kept(self.out / "runs" / "mask-agreement.json", key, "agreement", measure)

    def _val_model_source(self) -> NuScenesSource:
        return model_source(self.dataroot, self.version, "val", self.config, False, nusc=self.train_source.nusc)

    def robustness(self) -> dict[str, dict]:
        """Each teacher on val with both sensors, LiDAR only and camera only: a fuser that leans
        on one sensor collapses without it."""
        for fuser in FUSER_LABELS:
            self.teacher(fuser)
        return {FUSER_LABELS[fuser]: {
            label: summarise([self.extra_evaluation(self._teacher_name(fuser), self._teacher_spec(fuser),
                                                    self.dataroot, "val", f"val_without_{dropped}", dropped)
                              if dropped else json.loads((self.out / "runs" / self._teacher_name(fuser)
                                                          / "metrics.json").read_text())])
            for label, dropped in SENSOR_CASES.items()} for fuser in FUSER_LABELS}

    def extra_evaluation(self, name: str, spec: dict, dataroot: Path, split: str, tag: str,
                         drop_sensor: str | None = None) -> dict:
        """A finished run evaluated on another split or dataset (or with a sensor dropped); kept in
        <tag>.json and reused while the run's spec and checkpoint, the dataset (as it is on disk),
        the split and the dropped sensor stay the same."""
        folder, checkpoint = self.out / "runs" / name, self._checkpoint(name)
        key = _spec({"spec": spec, "checkpoint": self._stamp(checkpoint), "dataroot": str(dataroot),
                     "data": self._identity(dataroot), "split": split, "drop_sensor": drop_sensor})
        return _kept(folder / f"{tag}.json", key, "metrics",
                     lambda: evaluate(checkpoint, dataroot, self.version, split, folder / f"eval_{tag}",
                                      progress=self.progress, drop_sensor=drop_sensor))

    def training_split_metrics(self, name: str, spec: dict) -> dict:
        """A finished run's metrics on the split it was trained on: a lead on val that is not
        a lead here (or the reverse) is a generalisation gap, not a modelling result."""
        return self.extra_evaluation(name, spec, self.dataroot, "train", "training_split")

    def heldout_metrics(self, student: Student) -> dict:
        return self.extra_evaluation(student.name, self._student_spec(student), self.heldout, "val", "heldout")

    def plan(self) -> dict[str, list[tuple[str, Student]]]:
        """The suite's tables: row label -> student."""
        return tables(self.suite.seeds, self.suite.ablation_seeds, self.suite.tables)

    def _heldout_tables(self) -> list[str]:
        return [table for table in HELDOUT_TABLES if table in self.suite.tables]

    def _fusers(self) -> tuple[str, ...]:
        """The teachers the tables distil from: the ConvFuser only for the fuser comparison."""
        return tuple(FUSER_LABELS) if "fusers" in self.suite.tables else ("mgfm",)

    def student_with_evaluations(self, student: Student) -> None:
        """A student's run and the extra evaluations `run` reads of it: the training split for
        the comparison rows, the held-out world for the rows of HELDOUT_TABLES."""
        self.student(student)
        plan = self.plan()
        if student in (row for _, row in plan.get("comparison", [])):
            self.training_split_metrics(student.name, self._student_spec(student))
        if self.heldout is not None and student in (row for table in self._heldout_tables()
                                                    for _, row in plan[table]):
            self.heldout_metrics(student)

    def train_side_by_side(self, jobs: int) -> None:
        """What the students start from (the LiDAR baseline, both teachers, every mask
        generator) first, in this process; then every student with its extra evaluations, in
        `jobs` processes of an equal share of the cores. Once their inputs exist the runs are
        independent, and small CPU models use one core per process better than one process
        uses them all."""
        for fuser in self._fusers():
            self.teacher(fuser)
        plan = self.plan()
        # Seed by seed, so that the first seed's tables are complete first (`--seeds 0` then reads them).
        students = sorted(dict.fromkeys(student for rows in plan.values() for _, student in rows),
                          key=lambda student: student.seed)
        for run in dict.fromkeys(student.masks for student in students if student.masks):
            self.masks(run)
        threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        arguments = dict(dataroot=self.dataroot, version=self.version, out=self.out, config=self.config,
                         suite=self.suite, heldout=self.heldout, progress=False, inputs_ready=True)
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(threads, arguments))
        try:
            futures = [pool.submit(_train_student, student) for student in students]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"students, {jobs} side by side",
                               unit="run", disable=not self.progress):
                future.result()
        finally:  # the first failure cancels the runs not yet started (those under way finish first)
            pool.shutdown(cancel_futures=True)

    def heldout_results(self) -> dict:
        """Teacher and the rows of HELDOUT_TABLES (comparison, components, mask choice, camera)
        on the val split of a second world: more objects per class than one small val split gives."""
        teacher = self.extra_evaluation("teacher", self._teacher_spec(), self.heldout, "val", "heldout")
        held = {"dataroot": str(self.heldout), "teacher": summarise([teacher]), "tables": {}}
        for table in self._heldout_tables():
            held["tables"][table] = summarised(self.plan()[table], self.heldout_metrics)
        source = NuScenesSource(self.heldout, self.version, "val", 0)
        held["val_objects"] = source.objects_per_class()
        return held

    def run(self, jobs: int = 1) -> dict:
        """Every table; with `jobs` > 1 the students train side by side first (train_side_by_side)."""
        if jobs > 1:
            self.train_side_by_side(jobs)
        self.teacher()
        teacher_metrics = json.loads((self.out / "runs" / "teacher" / "metrics.json").read_text())
        results = {"teacher": summarise([teacher_metrics]), "tables": {}}
        plan = self.plan()
        for table, rows in plan.items():
            results["tables"][table] = summarised(rows, self.student)
        results["training_split"] = {
            "teacher": summarise([self.training_split_metrics("teacher", self._teacher_spec())]),
            **summarised(plan.get("comparison", []),
                         lambda student: self.training_split_metrics(student.name, self._student_spec(student)))}
        val = NuScenesSource(self.dataroot, self.version, "val", 0, nusc=self.train_source.nusc)
        results["val_objects"] = val.objects_per_class()
        if "masks" in plan:
            results["selectivity"] = self.selectivity()
            results["mask_agreement"] = self.mask_agreement()
        if "fusers" in plan:
            results["robustness"] = self.robustness()
        if self.heldout is not None:
            results["heldout"] = self.heldout_results()
        atomic_write_json(self.out / "results.json", results)
        self.pictures(results)
        atomic_write_text(self.out / "results.md", markdown(results))
        return results

    def pictures(self, results: dict) -> None:
        """masks.png and features.png for the first val sample, with the comparison's students;
        robustness.png of the teachers with a sensor missing, with the fuser comparison."""
        from .pictures import robustness_picture, write_distillation_pictures

        if "robustness" in results:
            atomic_write_bytes(self.out / "robustness.png", robustness_picture(results["robustness"]))
        if "comparison" not in results["tables"]:
            return

        students = {label: self._checkpoint(student.name)
                    for label, student in (("LiDAR", Student("lidar")), ("LiDAR+VeXKD", Student("lidar", "vexkd")),
                                           ("camera", Student("camera")), ("camera+VeXKD", Student("camera", "vexkd")))}
        write_distillation_pictures(self.dataroot, self.version, self.teacher(), self.masks(MaskRun(blocks=3)),
                                    students, self.out, nusc=self.train_source.nusc)


_worker_experiment: Experiment | None = None  # a side-by-side process's own, made once by _start_worker


def _start_worker(threads: int, arguments: dict) -> None:
    """A side-by-side process: its share of the cores, and one Experiment for all its runs (each
    reads the dataset's tables and takes its identity once)."""
    global _worker_experiment
    torch.set_num_threads(threads)
    _worker_experiment = Experiment(**arguments)


def _train_student(student: Student) -> None:
    _worker_experiment.student_with_evaluations(student)


def _kept(stored: Path, key: dict, field: str, compute) -> dict:
    """`compute()`'s result, kept under `field` in `stored` beside `key` (what it was made
    from) and reused while the key is the same."""
    if stored.is_file():
        saved = json.loads(stored.read_text())
        if {name: saved.get(name) for name in key} == key:
            return saved[field]
    value = compute()
    atomic_write_json(stored, {**key, field: value})
    return value


def run_experiment(dataroot: Path, version: str, out: Path, suite_name: str, config_name: str = "tiny",
                   overrides: list[str] = (), progress: bool = True, seeds: tuple[int, ...] | None = None,
                   ablation_seeds: tuple[int, ...] | None = None, heldout: Path | None = None, jobs: int = 1,
                   only: tuple[str, ...] | None = None) -> dict:
    """Run a suite; `seeds` replaces the suite's seeds and `ablation_seeds` those of the blocks and
    distance tables (default: `seeds`). Finished runs of other seeds stay reusable. `heldout`: a
    second dataset whose val split the main tables' checkpoints are also evaluated on. `jobs`:
    students trained side by side. `only`: run these tables (of TABLES) and what they need."""
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
    if only is not None:
        unknown = [name for name in only if name not in TABLES]
        if unknown or not only:
            raise ValueError(f"tables are among {', '.join(TABLES)}, not {', '.join(unknown) or 'none'}")
        suite = replace(suite, tables=tuple(dict.fromkeys(only)))
    return Experiment(dataroot, version, out, load_config(config_name, overrides), suite, progress, heldout).run(jobs)
