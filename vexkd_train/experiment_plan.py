"""What `vexkd-train experiment` runs: the runs (typed), the suites, and the paper's tables
as rows of students. experiment.py trains and evaluates them; experiment_report.py writes
the tables."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from vexkd_core.distill.distiller import BOX_MODES, GENERATED
from vexkd_core.modalities import reads

QUERY_NAMES = {"teacher": "learned", "random": "random", "fused": "fused"}  # in run names


TASK_NAMES = {"both": "", "detection": "-det", "map": "-map"}  # train.tasks -> in run names
# The teacher's fuser -> in run names; "none": a LiDAR-only model trained as long as the
# teacher from the same start (the self-distillation control).
TEACHER_NAMES = {"mgfm": "", "convfuser": "-convfuser", "none": "-lidarteacher"}
TEACHER_TASK_NAMES = {"both": "", "detection": "-detonly", "map": "-maponly"}  # the teacher's train.tasks


def teacher_suffix(fuser: str = "mgfm", tasks: str = "both", seed: int = 0) -> str:
    """What names a teacher in the names of its runs and of the runs distilled from it: its
    fuser, its tasks and the seed of the LiDAR student it starts from."""
    return TEACHER_NAMES[fuser] + TEACHER_TASK_NAMES[tasks] + (f"-t{seed}" if seed else "")


@dataclass(frozen=True)
class Teacher:
    """One teacher run: a fused model with `fuser` (or, fuser "none", a LiDAR-only model trained
    as long), started from the LiDAR student of `seed` and `tasks` and trained on `tasks`
    (BEVFusion's practice: pre-train the LiDAR branch, then fine-tune fused)."""

    fuser: str = "mgfm"
    seed: int = 0
    tasks: str = "both"

    @property
    def name(self) -> str:
        return "teacher" + teacher_suffix(self.fuser, self.tasks, self.seed)

    @property
    def start(self) -> "Student":
        return Student("lidar", seed=self.seed, tasks=self.tasks)


@dataclass(frozen=True)
class MaskRun:
    """One mask-generator run: generators of `blocks` blocks whose query is `query`
    (mask_generator.QUERIES: the teacher's, random, or the fused map)."""

    blocks: int = 3
    query: str = "teacher"
    teacher_seed: int = 0  # the MGFM teacher's (Student.teacher_seed)
    teacher_tasks: str = "both"  # the MGFM teacher's train.tasks: its generators are one per task it has

    @property
    def name(self) -> str:
        return f"masks-{QUERY_NAMES[self.query]}-b{self.blocks}" + teacher_suffix(tasks=self.teacher_tasks,
                                                                                 seed=self.teacher_seed)

    @property
    def teacher(self) -> Teacher:
        return Teacher(seed=self.teacher_seed, tasks=self.teacher_tasks)

    short_name = "masks"  # in a suite of one mask run (the demo's)


@dataclass(frozen=True)
class Student:
    """One distilled (or baseline) student run."""

    modality: str
    distill: str = "none"
    levels: tuple[str, ...] = ("low", "high")
    loss: str = "at"
    blocks: int = 3
    seed: int = 0
    fuser: str = "mgfm"  # the teacher's fuser (TEACHER_NAMES: MGFM, ConvFuser, or a LiDAR-only teacher)
    depth_supervision: bool = True  # camera students: BEVDepth's depth loss (model.camera.depth_loss_weight)
    tasks: str = "both"  # train.tasks: one head (the paper trains a model per task) or both
    teacher_seed: int = 0  # the seed of the LiDAR student the teacher starts from (and of its data order)
    # The teacher's train.tasks: a multi-task teacher, or one of a task (started from the LiDAR
    # student of that task), as the paper trains a model per task.
    teacher_tasks: str = "both"

    def __post_init__(self) -> None:
        if not self.depth_supervision and reads(self.modality, "lidar"):  # a model with LiDAR has no depth loss
            raise ValueError(f"depth supervision is a camera student's; a {self.modality} student has none to leave out")
        if self.tasks not in TASK_NAMES:
            raise ValueError(f"tasks must be one of {', '.join(TASK_NAMES)}, not '{self.tasks}'")
        if self.teacher_tasks not in TASK_NAMES:
            raise ValueError(f"teacher_tasks must be one of {', '.join(TASK_NAMES)}, not '{self.teacher_tasks}'")
        if self.teacher_tasks not in ("both", self.tasks):
            raise ValueError(f"a {self.teacher_tasks} teacher has nothing to distil for a student of "
                             f"train.tasks={self.tasks}")
        if self.distill in BOX_MODES and self.tasks == self.teacher_tasks == "map":  # no detection head in either
            raise ValueError(f"{self.distill} masks lie on the ground-truth boxes: a map student needs a teacher "
                             "with a detection head for them")
        if self.fuser != "mgfm" and self.distill in GENERATED:  # MaskRun trains on the MGFM teacher
            raise ValueError(f"generated masks are the MGFM teacher's: not for a student of the {self.fuser} teacher")

    @property
    def name(self) -> str:
        depth = "" if self.depth_supervision else "-nodepth"
        tasks = TASK_NAMES[self.tasks]
        if self.distill == "none":
            return f"{self.modality}{depth}{tasks}-baseline-s{self.seed}"
        teacher = teacher_suffix(self.fuser, self.teacher_tasks, self.teacher_seed)
        return (f"{self.modality}{depth}{tasks}-{self.distill}-{'+'.join(self.levels)}-{self.loss}-b{self.blocks}"
                f"{teacher}-s{self.seed}")

    @property
    def short_name(self) -> str:
        """The name in a suite of one student per modality and distillation (the demo's)."""
        return self.modality if self.distill == "none" else f"{self.modality}-{self.distill}"

    @property
    def baseline(self) -> "Student":
        """The undistilled student a distilled one is compared with: same modality, seed, tasks
        and depth supervision (the same data order too, so gains pair seed by seed)."""
        return Student(self.modality, seed=self.seed, depth_supervision=self.depth_supervision, tasks=self.tasks)

    @property
    def teacher(self) -> Teacher:
        return Teacher(self.fuser, self.teacher_seed, self.teacher_tasks)

    @property
    def masks(self) -> MaskRun | None:
        if self.distill in GENERATED:
            return MaskRun(self.blocks, GENERATED[self.distill], self.teacher_seed, self.teacher_tasks)
        return None


PAPER_TABLES = ("comparison", "components", "masks", "blocks", "distance", "fusers", "camera")
# The mask study's (docs/mask_study.md); study-map-teacher was added after seed 2, when the
# multi-task teacher was found to map worse than the map-only students it was distilled into.
STUDY_TABLES = ("study-lidar", "study-camera", "study-map-teacher")
TABLES = PAPER_TABLES + STUDY_TABLES
# The study's second teacher starts from the LiDAR student of this seed, which no student uses.
UNUSED_SEED = 100
# The study's tables are a model per task whatever the suite: a student per task of this tuple
# for each row (the camera student's is detection, where its teacher knows far more than it).
STUDY_TASKS = {"study-lidar": ("detection", "map"), "study-camera": ("detection",), "study-map-teacher": ("map",)}


@dataclass(frozen=True)
class Suite:
    epochs: int  # student and teacher epochs
    mask_epochs: int | None  # None: the mask recipe's (MaskSettings.recipe)
    seeds: tuple[int, ...]
    max_steps: int = 0  # 0: full epochs (the quick suite caps steps to stay seconds long)
    ablation_seeds: tuple[int, ...] | None = None  # blocks and distance tables; None: `seeds`
    tables: tuple[str, ...] = PAPER_TABLES  # the tables to run, of TABLES
    # Every model that reads cameras starts its image backbone, neck and depth network from
    # this checkpoint's (`--image-encoder-from`); None: from random weights.
    image_encoder_from: Path | None = None
    training_split: bool = True  # also evaluate the comparison's runs on the split they trained on
    # True: a run is redone when the package's code changes (the demo, minutes long). False:
    # runs are kept across code edits (the paper suite, hours long); a fix that must redo
    # them names itself in the spec (DISTILLED_TRAINING_REVISION).
    redo_on_code_change: bool = False
    short_names: bool = False  # runs/<Student.short_name>: for suites of one run of each kind
    # True: every row of the paper's tables is a detection student (its mAP, NDS) and a map
    # student (its mIoU), as the paper trains a model per task; False: one multi-task
    # student per row. The study's tables are per task either way (STUDY_TASKS).
    per_task: bool = False


PACKAGE = Path(__file__).resolve().parent.parent
# The image stages camera models start from in the demo and the study (pretrained/README.md).
PRETRAINED_IMAGE_STAGES = PACKAGE / "pretrained" / "camera_world_seed3.pt"
SUITES = {"quick": Suite(epochs=1, mask_epochs=1, seeds=(0,), max_steps=2),
          "paper": Suite(epochs=15, mask_epochs=None, seeds=(0, 1, 2), per_task=True),
          # The mask study (docs/mask_study.md): the paper's schedule, a model per task, camera
          # models from the demo's pretrained image stages; seeds are added run by run.
          "study": Suite(epochs=15, mask_epochs=None, seeds=(0, 1, 2, 3, 4, 5, 6, 7), tables=STUDY_TABLES,
                         image_encoder_from=PRETRAINED_IMAGE_STAGES, training_split=False)}
FUSER_LABELS = {"mgfm": "MGFM", "convfuser": "ConvFuser"}
SENSOR_CASES = {"both": None, "LiDAR only": "camera", "camera only": "lidar"}  # label -> sensor dropped
# Also evaluated on the held-out world (and the study's on the test world).
HELDOUT_TABLES = ("comparison", "components", "masks", "camera", *STUDY_TABLES)


def tables(seeds: tuple[int, ...], ablation_seeds: tuple[int, ...] | None = None,
           names: tuple[str, ...] = PAPER_TABLES, per_task: bool = False) -> dict[str, list[tuple[str, Student]]]:
    """Row label -> student, per table of `names` (the paper's ablations are on the LiDAR
    student). `ablation_seeds` (default: `seeds`) are those of the generator-blocks and
    distance tables. `per_task`: a paper table's row is a student per task (the study's
    always are, STUDY_TASKS)."""
    def each(label: str, student: Student, chosen: tuple[int, ...] = seeds) -> list[tuple[str, Student]]:
        return [(label, replace(student, seed=seed)) for seed in chosen]

    ablation_seeds = seeds if ablation_seeds is None else ablation_seeds

    vexkd = Student("lidar", "vexkd")
    camera, camera_without_depth = Student("camera"), Student("camera", depth_supervision=False)
    every = {
        "comparison": each("LiDAR student", Student("lidar")) + each("LiDAR student + VeXKD", vexkd)
        + each("camera student", Student("camera")) + each("camera student + VeXKD", Student("camera", "vexkd")),
        "components": each("baseline", Student("lidar")) + each("+ MGFM teacher (whole-map FD, low)",
                                                                 Student("lidar", "full", ("low",)))
        + each("+ low-level MFD", Student("lidar", "vexkd", ("low",))) + each("+ high-level MFD", vexkd),
        "masks": [row for label, mode in (("no FD", "none"), ("whole map", "full"), ("GT foreground key points",
                  "foreground"), ("GT-centred Gaussian", "gaussian"), ("top activation", "activation"),
                  ("generated, random query", "random-query"), ("generated, fusion query (VeXKD)", "vexkd"))
                  for row in each(label, Student("lidar", mode))],
        "blocks": [row for blocks in (1, 2, 3, 4)
                   for row in each(f"{blocks} blocks", replace(vexkd, blocks=blocks), ablation_seeds)],
        "distance": [row for label, loss in (("AT", "at"), ("L1", "l1"), ("L2", "mse"), ("Smooth-L1", "smoothl1"))
                     for row in each(label, replace(vexkd, loss=loss), ablation_seeds)],
        # The paper's motivation for the MGFM: the same distillation (whole map, both levels:
        # ConvFuser has no query to generate masks from) from each teacher.
        "fusers": each("LiDAR student", Student("lidar")) + each("camera student", Student("camera")) + [
            row for modality, name in (("lidar", "LiDAR student"), ("camera", "camera student"))
            for fuser, label in FUSER_LABELS.items()
            for row in each(f"{name} + {label} teacher (whole-map FD)", Student(modality, "full", fuser=fuser))],
        # The camera student with and without BEVDepth's depth supervision, each with and without VeXKD.
        "camera": each("camera student", camera) + each("camera student + VeXKD", replace(camera, distill="vexkd"))
        + each("camera student without depth supervision", camera_without_depth)
        + each("camera student without depth supervision + VeXKD", replace(camera_without_depth, distill="vexkd")),
    }
    lidar_masks = [(label, Student("lidar", mode)) for label, mode in (
        ("no FD", "none"), ("whole map", "full"), ("GT-centred Gaussian", "gaussian"),
        ("top activation", "activation"), ("generated, random query", "random-query"),
        ("generated, fused map as query", "fused-query"), ("generated, fusion query (VeXKD)", "vexkd"))]
    camera_masks = [(label, Student("camera", mode)) for label, mode in (
        ("no FD", "none"), ("whole map", "full"), ("generated, random query", "random-query"),
        ("generated, fusion query (VeXKD)", "vexkd"))]
    # What is cross-modal: whole-map FD from a LiDAR-only model trained as long as the teacher
    # (self-distillation), and from a teacher whose start no student shares.
    controls = [("self-distillation: whole map from a LiDAR-only teacher", Student("lidar", "full", fuser="none")),
                ("whole map, teacher from an unused seed", Student("lidar", "full", teacher_seed=UNUSED_SEED))]
    every["study-lidar"] = [row for label, student in lidar_masks + controls for row in each(label, student)]
    every["study-camera"] = [row for label, student in camera_masks for row in each(label, student)]
    # The map student from a teacher of the map alone, started from the map-only LiDAR student
    # (the paper trains a model per task): the mask table (but the GT-centred Gaussian, whose
    # boxes need a detection head) and the self-distillation control again.
    map_teacher = [("no FD", Student("lidar", tasks="map"))] + [
        (label, Student("lidar", mode, tasks="map", teacher_tasks="map")) for label, mode in (
            ("whole map", "full"), ("top activation", "activation"), ("generated, random query", "random-query"),
            ("generated, fusion query (VeXKD)", "vexkd"))] + [
        ("self-distillation: whole map from a LiDAR-only map model",
         Student("lidar", "full", fuser="none", tasks="map", teacher_tasks="map"))]
    every["study-map-teacher"] = [row for label, student in map_teacher for row in each(label, student)]
    chosen = {name: rows for name, rows in every.items() if name in names}
    def per_task_rows(name: str, rows: list[tuple[str, Student]]) -> list[tuple[str, Student]]:
        tasks = STUDY_TASKS.get(name, ("detection", "map") if per_task else None)
        return rows if tasks is None else [(label, replace(student, tasks=task)) for label, student in rows
                                           for task in tasks]

    return {name: per_task_rows(name, rows) for name, rows in chosen.items()}
