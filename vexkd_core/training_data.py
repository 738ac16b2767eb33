"""What a model was trained on, recorded in its checkpoint and copied into the ONNX sidecar
exported from it, so whoever evaluates or serves a model file can tell a model of the
synthetic world from one of real nuScenes.

`training_data_line` gives the one line the node and `vexkd-train eval` print, from either
a checkpoint payload or a sidecar.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

FIELD = "training_data"  # its key in a checkpoint payload and in a sidecar
NOT_RECORDED = "training data not recorded (checkpoint from an older vexkd)"
# The record's fields and the types they must have.
_TYPES = {"dataset": str, "version": str, "split": (str, type(None)), "samples": int, "synthetic": bool}


@dataclass(frozen=True)
class TrainingData:
    dataset: str  # the dataroot's folder name
    version: str  # the tables' version, e.g. v1.0-trainval
    split: str | None  # None: every scene of the version
    samples: int  # key frames of the split
    synthetic: bool  # written by `vexkd-data synth` (its marker file at the dataroot), else real data

    @classmethod
    def of_source(cls, source) -> TrainingData:
        """The dataset a NuScenesSource reads."""
        # Imported here: reading or describing a checkpoint needs no simulator code.
        from vexkd_core.data.synthetic.writer import MARKER

        dataroot = Path(source.nusc.dataroot)
        return cls(dataroot.name, source.nusc.version, source.split, len(source), (dataroot / MARKER).is_file())

    @classmethod
    def from_payload(cls, record) -> TrainingData:
        """The record as save_checkpoint wrote it; ValueError naming what does not fit.
        Keys other than the fields are ignored: a newer vexkd may record more."""
        if not isinstance(record, Mapping):
            raise ValueError(f"it is {type(record).__name__}, not a mapping")
        missing = [name for name in _TYPES if name not in record]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        for name, kind in _TYPES.items():
            value = record[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"its {name} is {value!r:.60}")
        return cls(**{name: record[name] for name in _TYPES})

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.synthetic:
            split = f"split {self.split}" if self.split is not None else "all scenes"
            return f"trained on synthetic world '{self.dataset}' ({self.version}, {split}, {self.samples} samples)"
        split = self.split if self.split is not None else "all scenes"
        return f"trained on nuScenes {self.version} {split} ({self.samples} samples)"


def recorded_training_data(description: Mapping) -> TrainingData | None:
    """The record of a checkpoint payload or an ONNX sidecar; None where none was recorded
    (older vexkd), ValueError where it does not read."""
    return TrainingData.from_payload(description[FIELD]) if FIELD in description else None


def training_data_line(description: Mapping) -> str:
    """One line saying what a model was trained on, from a checkpoint payload (load_checkpoint)
    or an ONNX sidecar (read_sidecar); inference.model_file_description reads either file.

    A record that does not read is described as unreadable rather than refused: it says where
    the model comes from and changes nothing the model computes."""
    try:
        recorded = recorded_training_data(description)
    except ValueError as error:
        return f"training data unreadable ({FIELD} record: {error})"
    return recorded.describe() if recorded is not None else NOT_RECORDED
