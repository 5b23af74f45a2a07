"""What a line of a public manifest or a private record may hold, checked whenever one is read.

Both files are plain text that a person can edit or a disk can damage. Everything ``lab verify`` and a resumed
``lab protect`` read from them goes through these models first, so a damaged line is one error naming the file,
the line and the field (never a traceback, and never copied forward into a new record): JSON that is not an object,
a missing field, a wrong type (strict: ``8000.0`` is not a sample rate, ``true`` is not a count), NaN or infinity,
an absurd size, a collection id that is not 16 hex digits (it is used in file names), or a path that leaves its
folder.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lab.config import format_validation_error
from lab.errors import LabError

Hex16 = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
MAX_FRAMES = 1 << 40  # about 290 days at 44.1 kHz: anything larger is damage, not audio
Rate = Annotated[int, Field(gt=0, le=10_000_000)]
Channels = Annotated[int, Field(gt=0, le=4096)]
Frames = Annotated[int, Field(ge=0, le=MAX_FRAMES)]
Count = Annotated[int, Field(ge=0, le=MAX_FRAMES * 4096)]


def check_rel_path(value: str) -> str:
    """A path relative to its folder, in POSIX form, that cannot leave it."""
    p = PurePosixPath(value)
    if not value or "\0" in value or p.is_absolute() or ".." in p.parts or str(p) != value or value == ".":
        raise ValueError(f"not a plain relative path inside the folder (got {value!r})")
    return value


class Line(BaseModel):
    """Every line: a JSON object; unknown extra fields are kept (a newer lab may add some)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    kind: str


class Header(Line):
    kind: Literal["header"]
    format: str
    collection_id: Hex16
    key_fingerprint: Hex16
    labels: str
    classes: list[str] = Field(min_length=1)

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("classes are listed twice")
        return v


class WorkingFacts(BaseModel):
    """How lab protect made the working clips a protection was optimised on (lab/protect/optimise.py)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    sample_rate: Rate
    clip_seconds: float = Field(gt=0, le=60)
    clip_samples: Annotated[int, Field(gt=0, le=60 * 10_000_000)]


class ArraysFile(BaseModel):
    """The arrays file of an optimised protection: a plain file name (beside the record) and its SHA-256."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    file: str
    sha256: Sha256

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or "\0" in v or v in (".", ".."):
            raise ValueError(f"not a plain file name beside the record (got {v!r})")
        return v


class OptimisedFacts(BaseModel):
    """A record header's ``optimised``: what the protection was optimised on, and where its arrays are."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    working: WorkingFacts
    collection_sha256: Sha256
    sources: list[Sha256]
    arrays: ArraysFile


class RecordHeader(Header):
    output: str
    input: str
    protection: dict
    optimised: OptimisedFacts | None = None

    @field_validator("protection")
    @classmethod
    def _has_params(cls, v: dict) -> dict:
        if not isinstance(v.get("params"), dict):
            raise ValueError("the protection has no 'params' object")
        if not isinstance(v.get("defense", "poscuda"), str):
            raise ValueError("the protection's 'defense' is not a name")
        return v


class AudioFacts(Line):
    path: str
    label: str
    output_sha256: Sha256
    format: str
    subtype: str
    sample_rate: Rate
    channels: Channels
    frames: Frames
    seconds: float = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_rel_path(v)

    @model_validator(mode="after")
    def _seconds(self):
        if abs(self.seconds - self.frames / self.sample_rate) > 1e-6 * max(1.0, self.seconds):
            raise ValueError(f"seconds ({self.seconds}) is not frames / sample_rate "
                             f"({self.frames} / {self.sample_rate})")
        return self


class PublicFile(AudioFacts):
    kind: Literal["file"]


class PublicSummary(Line):
    kind: Literal["summary"]
    files: Count
    metadata: str | None = None
    metadata_sha256: Sha256 | None = None


class Patch(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    start: Frames
    every: Annotated[int, Field(gt=0, le=MAX_FRAMES)] | None
    count: Annotated[int, Field(ge=1, le=MAX_FRAMES)]
    length: Frames


class ProtectedFile(AudioFacts):
    kind: Literal["file"]
    status: Literal["protected"]
    class_: Annotated[int, Field(ge=0, alias="class")]
    source_sha256: Sha256
    past_full_scale: Count
    past_full_scale_handling: str
    patches: list[Patch] | None = None


class FailedFile(Line):
    kind: Literal["file"]
    status: Literal["failed"]
    path: str
    label: str | None
    error: str

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_rel_path(v)


class ProtectionLine(Line):
    kind: Literal["protection"]
    sample_rate: Rate
    protection: dict


class AnySummary(Line):
    kind: Literal["summary"]


PUBLIC = {"header": Header, "file": PublicFile, "summary": PublicSummary}
RECORD = {"header": RecordHeader, "protection": ProtectionLine, "summary": AnySummary}


def check_line(obj: object, schema: str, where: str) -> dict:
    """``obj`` (one parsed line) checked against ``schema`` (``public`` or ``record``); returns it unchanged, or
    raises a one-line :class:`LabError` that starts with ``where`` (file and line number)."""
    if not isinstance(obj, dict):
        raise LabError(f"{where}: not a JSON object; the file was damaged or edited (restore it from a backup)")
    kind = obj.get("kind")
    if schema == "record" and kind == "file":
        model = FailedFile if obj.get("status") == "failed" else ProtectedFile
    else:
        model = (PUBLIC if schema == "public" else RECORD).get(kind) if isinstance(kind, str) else None
    if model is None:
        raise LabError(f"{where}: unknown line kind {kind!r}; the file was damaged or edited (restore it from a "
                       f"backup)")
    try:
        model.model_validate(obj)
    except ValidationError as e:
        raise LabError(f"{where}: {format_validation_error(e)}; the file was damaged or edited (restore it from a "
                       f"backup)") from None
    return obj
