"""The runs an experiment suite is made of, each a stage (vexkd_train.stages) in `<out>/runs/<name>/`:
students, the teacher (started from the LiDAR student, BEVFusion's practice), the mask
generators, and their evaluations. A run's spec holds its settings, the identity of the dataset
on disk and the stamps of the checkpoints it started from, so an interrupted suite resumes where
it stopped, and a rewritten dataset or a retrained teacher redoes what depended on it. With a
ledger (vexkd_train.ledger), a suite also resumes on another machine: a student the ledger holds
is not trained again, and its results come from there.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from vexkd_core.checkpoint import model_from_checkpoint
from vexkd_core.config import Config
from vexkd_core.data.dataset import model_source
from vexkd_core.data.nuscenes_source import NuScenesSource, open_nuscenes, split_scene_names
from vexkd_core.fingerprint import code_digest, content_stamp, dataset_contents, dataset_identity, file_stamp
from vexkd_core.modalities import reads
from vexkd_core.models.vexkd import initial_model
from vexkd_train.evaluate import MAP_COUNTS, evaluate
from vexkd_train.experiment_plan import PACKAGE, MaskRun, Student, Suite, Teacher
from vexkd_train.ledger import Ledger
from vexkd_train.loop import median_step_seconds
from vexkd_train.masks import MASKS_FORMAT, MaskSettings, train_masks
from vexkd_train.stages import StageTime, Stages
from vexkd_train.trainer import RunOptions, train
from vexkd_train.training_setup import build_distiller, initialise_from_lidar, initialise_image_stages
from vexkd_train.world_parts import PARTS, part_metrics

# In a distilled student's spec, so runs trained before a fix to distilled training are redone
# rather than reused. 2: the student's parameters are stepped once per step (before, the
# distiller also held them, and AdamW stepped them twice: twice the learning rate).
DISTILLED_TRAINING_REVISION = 2


class Runs:
    def __init__(self, dataroot: Path, version: str, out: Path, config: Config, suite: Suite, progress: bool = True,
                 inputs_ready: bool = False, stages: Stages | None = None, ledger: Path | None = None):
        """`inputs_ready`: the teachers and mask generators are trained already (the side-by-side
        runs' processes, which must never train them, as two could at once). `stages`: whose
        bookkeeping to join (the demo's, whose other steps are stages too). `ledger`: the folder
        of a Ledger that finished students are kept in and reused from."""
        self.dataroot, self.version, self.out, self.config, self.suite = dataroot, version, out, config, suite
        self.progress, self.inputs_ready = progress, inputs_ready
        self.stages = stages or Stages(out / "stages", announce=progress)
        self.train_source = model_source(dataroot, version, "train", config, config.train.augment)
        self.code = code_digest(PACKAGE / "vexkd_core", PACKAGE / "vexkd_train") if suite.redo_on_code_change else None
        # Each dataset's identity is taken once: the suite's own reads leave the dataset as it
        # was, and taking it at every reuse check would hash its tables again each time.
        self.identities: dict[Path, str] = {}
        self.worlds: dict[Path, object] = {}  # a second world's NuScenes tables, read once (world_part_metrics)
        self.ledger = Ledger(ledger) if ledger is not None else None
        self.from_ledger: dict[str, dict] = {}  # run name -> its results, for students the ledger holds
        # A ledger's keys, taken once: input files by (path, size, mtime), worlds by folder.
        self.content_stamps: dict[tuple, list] = {}
        self.world_contents: dict[Path, str] = {}

    def identity(self, dataroot: Path) -> str:
        if dataroot not in self.identities:
            self.identities[dataroot] = dataset_identity(dataroot, self.version)
        return self.identities[dataroot]

    def stamp(self, path: Path) -> list:
        """An input file's stamp, its path relative to `out` so a moved suite stays reusable."""
        return file_stamp(path, root=self.out)

    def content_stamp(self, path: Path) -> list:
        """An input file's stamp by its contents (a ledger's specs), hashed once while the file is unchanged."""
        key = tuple(map(str, file_stamp(path)))
        if key not in self.content_stamps:
            self.content_stamps[key] = content_stamp(path, root=self.out)
        return self.content_stamps[key]

    def world_content(self, dataroot: Path) -> str:
        """A dataset's digest by its contents (a ledger's specs and evaluations)."""
        if dataroot not in self.world_contents:
            self.world_contents[dataroot] = dataset_contents(dataroot, self.version)
        return self.world_contents[dataroot]

    def name(self, run: Student | MaskRun) -> str:
        return run.short_name if self.suite.short_names else run.name

    def folder(self, name: str) -> Path:
        return self.out / "runs" / name

    def checkpoint(self, name: str) -> Path:
        return self.folder(name) / "model.pt"

    def val_source(self) -> NuScenesSource:
        return model_source(self.dataroot, self.version, "val", self.config, False, nusc=self.train_source.nusc)

    def _common_spec(self, portable: bool = False) -> dict:
        """What shapes every run; the seed list is left out so adding seeds reuses finished runs."""
        data = self.world_content(self.dataroot) if portable else self.identity(self.dataroot)
        return {"schedule": {"epochs": self.suite.epochs, "mask_epochs": self.suite.mask_epochs,
                             "max_steps": self.suite.max_steps},
                "data": data, "code": self.code}

    def _image_encoder_spec(self, modality: str, stamp: Callable[[Path], list]) -> dict:
        start = self.suite.image_encoder_from
        return {"image_encoder": stamp(start)} if start is not None and reads(modality, "camera") else {}

    def student_spec(self, student: Student, portable: bool = False) -> dict:
        """A distilled student's spec holds its teacher's (and mask generators') stamps, so it
        is redone when they are retrained; asking for them finishes those runs first.
        `portable`: every input known by its contents, the same on any machine (a ledger's key)."""
        stamp = self.content_stamp if portable else self.stamp
        inputs = self._image_encoder_spec(student.modality, stamp)
        if student.distill != "none":
            inputs["teacher"] = stamp(self.teacher(student.teacher))
            inputs["distilled_training_revision"] = DISTILLED_TRAINING_REVISION
        if student.masks:
            inputs["masks"] = stamp(self.masks(student.masks))
        # teacher_tasks came after runs were recorded: left out at its default, those runs stay
        # reusable (the teacher's stamp names the teacher either way).
        fields = {key: value for key, value in asdict(student).items() if (key, value) != ("teacher_tasks", "both")}
        return {"student": fields, "config": self.config.to_dict(), "inputs": inputs, **self._common_spec(portable)}

    def teacher_config(self, teacher: Teacher) -> Config:
        """A fused teacher's config, or (fuser "none") the LiDAR-only model's; its data order is
        its seed's, its heads those of its tasks."""
        model = self.config.model if teacher.fuser == "none" else replace(self.config.model, fuser=teacher.fuser)
        return replace(self.config, model=model, train=replace(self.config.train, seed=teacher.seed,
                                                               tasks=teacher.tasks))

    def teacher_spec(self, teacher: Teacher = Teacher()) -> dict:
        """Needs the LiDAR student's checkpoint (the teacher starts from it): teacher() makes it first."""
        lidar = self.checkpoint(self.name(teacher.start))
        inputs = {"lidar": self.stamp(lidar),
                  **self._image_encoder_spec("fusion" if teacher.fuser != "none" else "lidar", self.stamp)}
        of_tasks = "" if teacher.tasks == "both" else f" {teacher.tasks}"
        started = (f"init from the seed-{teacher.seed}{of_tasks} LiDAR student"
                   + ("" if teacher.fuser != "none" else ", trained on LiDAR alone"))
        return {"teacher": started, "config": self.teacher_config(teacher).to_dict(), "inputs": inputs,
                **self._common_spec()}

    def _options(self, name: str) -> RunOptions:
        return RunOptions(self.folder(name), max_epochs=self.suite.epochs, max_steps=self.suite.max_steps,
                          progress=self.progress)

    def _start(self, model, modality: str) -> None:
        if self.suite.image_encoder_from is not None and reads(modality, "camera"):
            initialise_image_stages(model, self.suite.image_encoder_from)

    def _shared_input(self, name: str, spec: dict, outputs: list[Path], action) -> None:
        """A run other runs start from: never trained by a side-by-side process."""
        self._refuse_unless_ready(name, spec, outputs)
        self.stages.run(f"train {name}", spec, outputs, action)

    def _refuse_unless_ready(self, name: str, spec: dict, outputs: list[Path]) -> None:
        if self.inputs_ready and not self.stages.is_done(f"train {name}", spec, outputs):
            raise RuntimeError(f"{name} should have been trained before the students side by side")

    def student(self, student: Student, need_checkpoint: bool = False,
                evaluated_on: dict[str, Path] | None = None) -> dict:
        """The student's val metrics (training it first if needed), with its median step seconds.
        A student the ledger holds, evaluated as `evaluated_on` asks ({tag: world}, see
        _take_from_ledger), is not trained unless its checkpoint is needed (a teacher's start,
        a pictured student)."""
        name = self.name(student)
        if need_checkpoint:
            self.from_ledger.pop(name, None)
        elif self._take_from_ledger(student, evaluated_on or {}):
            return self.metrics(name)

        def train_student() -> None:
            config = replace(self.config, train=replace(self.config.train, seed=student.seed, tasks=student.tasks))
            if not student.depth_supervision:
                config = replace(config, model=replace(config.model, camera=replace(config.model.camera,
                                                                                   depth_loss_weight=0.0)))
            model = initial_model(config, student.modality)
            self._start(model, student.modality)
            distiller = None
            if student.distill != "none":
                distiller = build_distiller(self.teacher(student.teacher), model, student.distill,
                                            student.levels, student.loss, {"low": 1.0, "high": 1.0},
                                            self.masks(student.masks) if student.masks else None)
            train(model, config, self.train_source, student.modality, self._options(name), distiller)

        self.stages.run(f"train {name}", self.student_spec(student), [self.checkpoint(name)], train_student)
        return self.metrics(name)

    def teacher(self, teacher: Teacher = Teacher()) -> Path:
        """The teacher's checkpoint, training it (and the LiDAR student it starts from) first if needed."""
        name, lidar = teacher.name, teacher.start
        # The LiDAR student it starts from is a shared input too (not every suite's table row).
        self._refuse_unless_ready(self.name(lidar), self.student_spec(lidar), [self.checkpoint(self.name(lidar))])
        self.student(lidar, need_checkpoint=True)

        def train_teacher() -> None:
            config = self.teacher_config(teacher)
            if teacher.fuser == "none":
                model, _, _ = model_from_checkpoint(self.checkpoint(self.name(lidar)), expected_modality="lidar")
                train(model, config, self.train_source, "lidar", self._options(name))
                return
            model = initial_model(config, "fusion")
            initialise_from_lidar(model, self.checkpoint(self.name(lidar)))
            self._start(model, "fusion")
            train(model, config, self.train_source, "fusion", self._options(name))

        self._shared_input(name, self.teacher_spec(teacher), [self.checkpoint(name)], train_teacher)
        self.metrics(name)
        return self.checkpoint(name)

    def masks(self, run: MaskRun) -> Path:
        name, folder = self.name(run), self.folder(self.name(run))
        epochs = {} if self.suite.mask_epochs is None else {"epochs": self.suite.mask_epochs}
        settings = MaskSettings.recipe("soft", self.config.name, blocks=run.blocks, query=run.query,
                                       **epochs)
        teacher = self.teacher(run.teacher)
        spec = {"masks": asdict(settings), "format": MASKS_FORMAT, "inputs": {"teacher": self.stamp(teacher)},
                **self._common_spec()}
        self._shared_input(name, spec, [folder / "masks.pt"], lambda: train_masks(
            teacher, self.train_source, folder, settings, progress=self.progress, report_source=self.val_source()))
        return folder / "masks.pt"

    def _take_from_ledger(self, student: Student, evaluated_on: dict[str, Path]) -> bool:
        """Whether the student's results come from the ledger (then kept in from_ledger): this
        machine has no finished run of it (which would be used instead), and the ledger holds one
        made from the same inputs, with an evaluation of each tag of `evaluated_on` made on that
        same world (by contents; the test world's also in PARTS parts)."""
        name = self.name(student)
        if name in self.from_ledger:
            return True
        if self.ledger is None or self.stages.is_done(f"train {name}", self.student_spec(student),
                                                      [self.checkpoint(name)]):
            return False
        results = self.ledger.results(name, self.student_spec(student, portable=True))
        if results is None or results.get("parts") != PARTS:
            return False
        worlds = results.get("worlds", {})
        if any(worlds.get(tag) != self.world_content(world) for tag, world in evaluated_on.items()):
            return False
        self.from_ledger[name] = results
        self.stages.say(f"train {name}: reused from the ledger")
        return True

    def keep_in_ledger(self, student: Student, results: dict, evaluated_on: dict[str, Path]) -> None:
        """Records a student trained here in the ledger: `results` ({tag: metrics, and the test
        world's parts}), measured on the worlds of `evaluated_on` ({tag: world})."""
        name = self.name(student)
        if self.ledger is None or name in self.from_ledger:
            return
        worlds = {tag: self.world_content(world) for tag, world in evaluated_on.items()}
        self.ledger.keep(name, self.student_spec(student, portable=True),
                         {**results, "worlds": worlds, "parts": PARTS,
                          "train_seconds": self.stages.seconds(f"train {name}")})

    def metrics(self, name: str) -> dict:
        """A trained run's val metrics, with the median seconds of its training steps."""
        if name in self.from_ledger:
            return {**self.from_ledger[name]["metrics"], "step_seconds": self.from_ledger[name]["step_seconds"]}
        return {**self.evaluation(name, self.dataroot, "val"),
                "step_seconds": median_step_seconds(self.folder(name) / "log.csv")}

    def evaluation(self, name: str, dataroot: Path, split: str, tag: str = "metrics",
                   drop_sensor: str | None = None) -> dict:
        """A trained run evaluated on a split of a dataset (with a sensor dropped), kept in
        runs/<name>/<tag>.json while the checkpoint, the dataset as it is on disk, the split
        and the dropped sensor stay the same."""
        if name in self.from_ledger:
            return self.from_ledger[name][tag]
        folder, checkpoint = self.folder(name), self.checkpoint(name)
        spec = {"checkpoint": self.stamp(checkpoint), "dataroot": str(dataroot), "data": self.identity(dataroot),
                "split": split, "drop_sensor": drop_sensor, "code": self.code}
        stage = f"evaluate {name}" if tag == "metrics" else f"evaluate {name} ({tag})"
        return self.stages.kept(stage, spec, folder / f"{tag}.json", lambda: evaluate(
            checkpoint, dataroot, self.version, split, folder / ("eval" if tag == "metrics" else f"eval_{tag}"),
            progress=self.progress, drop_sensor=drop_sensor))

    def training_split_metrics(self, name: str) -> dict:
        """A run's metrics on the split it trained on: a lead on val that is not a lead here
        (or the reverse) is a generalisation gap, not a modelling result."""
        return self.evaluation(name, self.dataroot, "train", "training_split")

    def world_metrics(self, name: str, world: Path, tag: str) -> dict:
        """A run's metrics on the val split of a second world (tag: "heldout", or the study's "test")."""
        return self.evaluation(name, world, "val", tag)

    def world_part_metrics(self, name: str, world: Path, tag: str) -> list[dict]:
        """A run's metrics on each of PARTS parts of a second world's val split (world_parts),
        each with the run's metrics on the whole split for what parts do not change (latency,
        size). An evaluation from before per-sample map counts were kept is run again."""
        if name in self.from_ledger:
            return self.from_ledger[name][f"{tag}_parts"]
        whole = self.world_metrics(name, world, tag)
        folder, checkpoint = self.folder(name), self.checkpoint(name)
        evaluated = folder / f"eval_{tag}"
        spec = {"checkpoint": self.stamp(checkpoint), "data": self.identity(world), "parts": PARTS, "code": self.code}

        def measure() -> dict:
            if whole["map"] is not None and not (evaluated / MAP_COUNTS).is_file():
                evaluate(checkpoint, world, self.version, "val", evaluated, progress=self.progress)
            if world not in self.worlds:
                self.worlds[world] = open_nuscenes(world, self.version)
            nusc = self.worlds[world]
            # A small world has fewer val scenes than PARTS: a part each.
            return {"parts": part_metrics(evaluated, nusc, "val", min(PARTS, len(split_scene_names(nusc, "val"))))}

        parts = self.stages.kept(f"evaluate {name} ({tag}, {PARTS} parts)", spec, folder / f"{tag}_parts.json",
                                 measure)["parts"]
        return [{**whole, **part} for part in parts]

    def in_processes(self, students: list[Student], jobs: int, task) -> None:
        """`task(runs, student)` for every student, in `jobs` processes of an equal share of the
        cores (each with its own Runs, inputs_ready); their stage timings join this run's. Small
        CPU models use one core per process better than one process uses them all."""
        if not students:
            return
        threads = max(1, len(os.sched_getaffinity(0)) // jobs)
        arguments = dict(dataroot=self.dataroot, version=self.version, out=self.out, config=self.config,
                         suite=self.suite, progress=False, inputs_ready=True,
                         ledger=self.ledger.folder if self.ledger else None)
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(threads, arguments))
        try:
            futures = [pool.submit(_run_in_worker, task, student) for student in students]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"students, {jobs} side by side",
                               unit="run", disable=not self.progress):
                self.stages.join(future.result())
        finally:  # the first failure cancels the runs not yet started (those under way finish first)
            pool.shutdown(cancel_futures=True)


_worker_runs: Runs | None = None  # a side-by-side process's own, made once by _start_worker


def _start_worker(threads: int, arguments: dict) -> None:
    """A side-by-side process: its share of the cores, and one Runs for all its runs (each
    reads the dataset's tables and takes its identity once)."""
    global _worker_runs
    torch.set_num_threads(threads)
    _worker_runs = Runs(**arguments)


def _run_in_worker(task, student: Student) -> list[StageTime]:
    before = len(_worker_runs.stages.timings)
    task(_worker_runs, student)
    return _worker_runs.stages.timings[before:]
