"""Per-instance results as values: what happened to each instance of a run."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from snapset.errors import RETRY_ON_REDELIVERY_CODES


class ErrorInfo(BaseModel):
    """An AWS error code (or one of Snapset's own) and a message that names the instance."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str

    @property
    def retry_on_redelivery(self) -> bool:
        return self.code in RETRY_ON_REDELIVERY_CODES


class InstanceStatus(StrEnum):
    STARTED = "started"
    DRY_RUN_OK = "dry_run_ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class Consistency(StrEnum):
    """What a set captured: the application's flushed and frozen state (its pre script
    succeeded) or what a power cut leaves (`crash`)."""

    APPLICATION = "application"
    CRASH = "crash"


class ScriptResult(BaseModel):
    """One script stage on one instance: its command (`pre-script`, `post-script`,
    `dry-run`), the final status of its last attempt (SSM's invocation status: `Success`,
    `Failed`, `TimedOut`, `Cancelled`, ...; or Snapset's own `NotManaged`, `SendFailed`,
    `NoResult`), how many times it was sent, and the error when it did not succeed."""

    model_config = ConfigDict(frozen=True)

    command: str
    status: str
    attempts: int = 0
    command_id: str | None = None
    error: ErrorInfo | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "Success"


class SnapshotInfo(BaseModel):
    """One snapshot of a set, as CreateSnapshots returned it."""

    model_config = ConfigDict(frozen=True)

    snapshot_id: str
    volume_id: str
    state: str | None = None
    volume_size: int | None = None
    encrypted: bool | None = None


class RetentionError(BaseModel):
    """A retention step that failed: a deletion (`snapshot_id` set) or a lookup (`None`)."""

    model_config = ConfigDict(frozen=True)

    snapshot_id: str | None = None
    code: str
    message: str


class RetentionResult(BaseModel):
    """What retention did for one instance: snapshots deleted, sets kept, errors.

    With `dry_run`, `deleted` lists what would have been deleted and nothing was. `kept` counts
    the instance's older sets of the policy that were kept (the set this run started is not
    counted); `remaining`, the sets retention would delete that this run had no time (or no
    share of the DeleteSnapshot rate) left for: kept whole, and the next run deletes them.
    Errors never fail the snapshot part of the report; failed deletions are retried on the next
    run.
    """

    model_config = ConfigDict(frozen=True)

    deleted: tuple[str, ...] = ()
    kept: int = 0
    remaining: int = 0
    errors: tuple[RetentionError, ...] = ()
    dry_run: bool = False


class InstanceOutcome(BaseModel):
    """The result for one instance: started with its snapshots, dry-run ok, skipped or failed."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    status: InstanceStatus
    snapshots: tuple[SnapshotInfo, ...] = ()
    excluded_volume_ids: tuple[str, ...] = ()
    error: ErrorInfo | None = None
    reason: str | None = None
    retention: RetentionResult | None = None
    # The set's consistency (a started or dry-run-ok instance; None when unknown: a set an
    # earlier delivery made and whose record was lost) and the policy's script stages.
    consistency: Consistency | None = None
    scripts: tuple[ScriptResult, ...] = ()

    @property
    def script_failed(self) -> bool:
        """Whether a script stage of this instance did not succeed."""
        return any(not s.succeeded for s in self.scripts)

    @property
    def post_script_failed(self) -> bool:
        """Whether a post script of this instance did not succeed: it may still be frozen."""
        return any(not s.succeeded for s in self.scripts if s.command == "post-script")

    @classmethod
    def failed(
        cls, instance_id: str, code: str, message: str, excluded: tuple[str, ...] = ()
    ) -> InstanceOutcome:
        return cls(
            instance_id=instance_id,
            status=InstanceStatus.FAILED,
            error=ErrorInfo(code=code, message=message),
            excluded_volume_ids=excluded,
        )

    @classmethod
    def skipped(
        cls, instance_id: str, reason: str, excluded: tuple[str, ...] = ()
    ) -> InstanceOutcome:
        return cls(
            instance_id=instance_id,
            status=InstanceStatus.SKIPPED,
            reason=reason,
            excluded_volume_ids=excluded,
        )
