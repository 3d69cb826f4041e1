"""EC2 snapshot copies and shares on the local AWS: CopySnapshot (pending, completion on the
server clock, the copySnapshot event of tests/fixtures/events/), the concurrent-copy limit,
KMS keys, ModifySnapshotAttribute's refusal for the AWS-managed key, the control API."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError
from localaws_testlib import Instance, load_event_fixture

from localaws import LocalAws, LocalAwsError
from localaws.aws_budget import EC2_BUCKETS, aws_budget

HOME, DEST, OTHER = "us-east-1", "us-west-2", "eu-west-1"
ACCOUNT, PEER = "123456789012", "210987654321"
NOTIFICATION = "EBS Snapshot Notification"
LIMIT_MESSAGE = "Too many snapshot copies in progress. The limit is {} for this destination region."
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = exc.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def _shape(value: Any) -> Any:
    """Keys and value types, recursively."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _millis(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _clock_now(aws: LocalAws) -> datetime:
    return datetime.fromisoformat(str(aws.clock()["now"]))


@pytest.fixture(scope="session")
def _dest_client(local_aws_server: LocalAws) -> Any:
    return local_aws_server.client("ec2", max_attempts=1, region_name=DEST)


@pytest.fixture
def dest(aws: LocalAws, _dest_client: Any) -> Any:
    """EC2 in the destination region, on a reset server with a frozen clock."""
    aws.freeze_clock()
    return _dest_client


@pytest.fixture
def source(ec2: Any) -> Callable[..., str]:
    """A completed snapshot in the home region (moto's CreateSnapshot is created completed)."""

    def make(**volume: Any) -> str:
        volume_id = ec2.create_volume(Size=8, AvailabilityZone=f"{HOME}a", **volume)["VolumeId"]
        return str(ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"])

    return make


def _copy(dest: Any, source_id: str, **kwargs: Any) -> str:
    return str(
        dest.copy_snapshot(SourceRegion=HOME, SourceSnapshotId=source_id, **kwargs)["SnapshotId"]
    )


def _describe(client: Any, snapshot_id: str) -> dict[str, Any]:
    snapshot: dict[str, Any] = client.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    return snapshot


def _own(client: Any) -> list[str]:
    """Our snapshots in the client's region (moto lists its AMIs' snapshots too, and ignores
    `OwnerIds`)."""
    snapshots = client.describe_snapshots(Filters=[{"Name": "owner-id", "Values": [ACCOUNT]}])
    return [s["SnapshotId"] for s in snapshots["Snapshots"]]


def _copy_events(aws: LocalAws) -> list[dict[str, Any]]:
    return [e for e in aws.drain_events() if e["detail"].get("event") == "copySnapshot"]


# --- pending, then completed -------------------------------------------------------------------


def test_copy_is_pending_in_the_destination_then_completes_with_its_event(
    aws: LocalAws, ec2: Any, dest: Any, source: Callable[..., str]
) -> None:
    original = source()
    start = _clock_now(aws)
    copy_id = _copy(dest, original, Description="DR copy")

    pending = _describe(dest, copy_id)
    assert pending["State"] == "pending"
    assert pending["Progress"] != "100%"
    assert pending["VolumeId"] == "vol-ffffffff"
    assert pending["VolumeSize"] == 8
    assert pending["Description"] == "DR copy"
    assert pending["OwnerId"] == ACCOUNT
    assert pending["Encrypted"] is False
    assert "KmsKeyId" not in pending
    assert pending["StartTime"] == start.replace(microsecond=0)  # EC2 renders whole seconds
    assert _own(dest) == [copy_id]
    with pytest.raises(ClientError) as exc:
        ec2.describe_snapshots(SnapshotIds=[copy_id])  # the copy is in the destination only
    assert _error(exc)[0] == "InvalidSnapshot.NotFound"

    aws.advance_clock(0.4)  # the session server's delay is 0.5 s, on the server clock
    assert _describe(dest, copy_id)["State"] == "pending"
    assert _copy_events(aws) == []
    aws.advance_clock(0.1)
    done = _describe(dest, copy_id)
    assert (done["State"], done["Progress"]) == ("completed", "100%")
    assert aws.copies_state()["pending"] == []

    [event] = _copy_events(aws)
    fixture = load_event_fixture("ebs-snapshot-notification-copy-succeeded")
    assert _shape(event) == _shape(fixture)
    assert list(event["detail"]) == list(fixture["detail"])  # AWS's field order too
    assert event["detail-type"] == NOTIFICATION
    assert (event["source"], event["account"], event["region"]) == ("aws.ec2", ACCOUNT, DEST)
    assert UUID.match(event["id"])
    copy_arn = f"arn:aws:ec2::{DEST}:snapshot/{copy_id}"
    assert event["resources"] == [copy_arn]
    assert event["detail"] == {
        "event": "copySnapshot",
        "result": "succeeded",
        "cause": "",
        "request-id": "",
        "snapshot_id": copy_arn,
        "source": f"arn:aws:ec2::{HOME}:snapshot/{original}",
        "startTime": _millis(start),
        "endTime": event["detail"]["endTime"],
        "incremental": "false",
        "transferType": "standard",
    }
    assert event["detail"]["endTime"] > event["detail"]["startTime"]


def test_a_later_copy_of_the_same_volume_is_incremental(aws: LocalAws, ec2: Any, dest: Any) -> None:
    volume_id = ec2.create_volume(Size=8, AvailabilityZone=f"{HOME}a")["VolumeId"]
    first, second = (ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"] for _ in range(2))
    _copy(dest, first)
    aws.complete_copies()
    _copy(dest, second)
    aws.complete_copies()
    assert [e["detail"]["incremental"] for e in _copy_events(aws)] == ["false", "true"]


def test_manual_completion_and_the_rule_on_the_destination_bus(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    aws.set_copies(delay_seconds=None)
    sqs = aws.client("sqs", region_name=DEST)
    queue_url = sqs.create_queue(QueueName="copies")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events = aws.client("events", region_name=DEST)
    events.put_rule(
        Name="copies",
        EventPattern=json.dumps({"source": ["aws.ec2"], "detail": {"event": ["copySnapshot"]}}),
    )
    events.put_targets(Rule="copies", Targets=[{"Id": "q", "Arn": queue_arn}])

    copy_id = _copy(dest, source())
    aws.advance_clock(3600)
    assert _describe(dest, copy_id)["State"] == "pending"  # manual: only complete_copies
    assert aws.complete_copies() == [copy_id]
    assert aws.complete_copies() == []

    [message] = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    delivered = json.loads(message["Body"])
    assert delivered["region"] == DEST
    assert delivered["detail"]["snapshot_id"].endswith(copy_id)


def test_injected_failure_per_source_snapshot(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    failing, fine = source(), source()
    state = aws.set_copies(fail_sources=[failing])
    assert list(state["fail_sources"]) == [failing]
    failed_copy, good_copy = _copy(dest, failing), _copy(dest, fine)
    aws.complete_copies()

    failed = _describe(dest, failed_copy)
    assert (failed["State"], failed["Progress"]) == ("error", "0%")
    assert failed["StateMessage"]
    assert _describe(dest, good_copy)["State"] == "completed"
    by_copy = {e["detail"]["snapshot_id"].rsplit("/", 1)[1]: e for e in _copy_events(aws)}
    event = by_copy[failed_copy]
    assert _shape(event) == _shape(load_event_fixture("ebs-snapshot-notification-copy-failed"))
    assert event["detail"]["result"] == "failed"
    assert event["detail"]["cause"] == failed["StateMessage"]
    assert event["detail"]["source"] == f"arn:aws:ec2::{HOME}:snapshot/{failing}"
    assert by_copy[good_copy]["detail"]["result"] == "succeeded"
    assert [(d["snapshot_id"], d["result"]) for d in aws.copies_state()["done"]] == [
        (failed_copy, "failed"),
        (good_copy, "succeeded"),
    ]

    aws.set_copies(fail_sources={fine: "Source snapshot ID is not valid"})
    again = _copy(dest, fine)
    aws.complete_copies()
    assert _describe(dest, again)["StateMessage"] == "Source snapshot ID is not valid"


# --- the concurrent-copy limit -----------------------------------------------------------------


def test_the_21st_concurrent_copy_is_refused_until_one_completes(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    original = source()
    aws.set_copies(delay_seconds=5)
    first = _copy(dest, original)
    aws.advance_clock(1)  # the other 19 are due a second after the first
    for _ in range(19):
        _copy(dest, original)
    with pytest.raises(ClientError) as exc:
        _copy(dest, original)
    assert _error(exc) == ("ResourceLimitExceeded", 400, LIMIT_MESSAGE.format(20))
    assert len(aws.copies_state()["pending"]) == 20  # the refused one created nothing

    other = aws.client("ec2", max_attempts=1, region_name=OTHER)
    other.copy_snapshot(SourceRegion=HOME, SourceSnapshotId=original)  # per destination region

    aws.advance_clock(4)  # the first copy completes, and frees its slot
    assert _describe(dest, first)["State"] == "completed"
    _copy(dest, original)
    with pytest.raises(ClientError) as exc:
        _copy(dest, original)
    assert _error(exc)[0] == "ResourceLimitExceeded"


def test_the_limit_is_configurable_and_a_deleted_pending_copy_frees_its_slot(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    original = source()
    aws.set_copies(concurrent_limit=2, delay_seconds=None)
    first, _second = _copy(dest, original), _copy(dest, original)
    with pytest.raises(ClientError) as exc:
        _copy(dest, original)
    assert _error(exc) == ("ResourceLimitExceeded", 400, LIMIT_MESSAGE.format(2))
    dest.delete_snapshot(SnapshotId=first)
    _copy(dest, original)
    assert len(aws.complete_copies()) == 2  # the deleted copy neither completes nor emits
    assert len(_copy_events(aws)) == 2


# --- validation --------------------------------------------------------------------------------


def test_the_source_must_exist_in_the_source_region_and_be_completed(
    aws: LocalAws, ec2: Any, dest: Any, make_instance: Callable[..., Instance]
) -> None:
    with pytest.raises(ClientError) as exc:
        _copy(dest, "snap-0123456789abcdef0")
    assert _error(exc) == (
        "InvalidSnapshot.NotFound",
        400,
        "The snapshot 'snap-0123456789abcdef0' does not exist.",
    )
    with pytest.raises(ClientError) as exc:
        _copy(dest, "snap-nothex")
    assert _error(exc)[:2] == ("InvalidSnapshotID.Malformed", 400)
    with pytest.raises(ClientError) as exc:
        dest.copy_snapshot(SourceRegion="xx-nowhere-1", SourceSnapshotId="snap-0123456789abcdef0")
    assert _error(exc)[:2] == ("InvalidParameterValue", 400)

    inst = make_instance(data_volume_tags=({},))
    [pending] = [
        s["SnapshotId"]
        for s in ec2.create_snapshots(
            InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeBootVolume": True}
        )["Snapshots"]
    ]  # frozen clock: stays pending
    with pytest.raises(ClientError) as exc:
        dest.copy_snapshot(SourceRegion=OTHER, SourceSnapshotId=pending)  # not in that region
    assert _error(exc)[0] == "InvalidSnapshot.NotFound"
    with pytest.raises(ClientError) as exc:
        _copy(dest, pending)
    assert _error(exc) == ("IncorrectState", 400, f"Snapshot '{pending}' is not 'completed'.")
    aws.complete_snapshots()
    _copy(dest, pending)
    assert len(aws.copies_state()["pending"]) == 1


def test_a_snapshot_of_another_account_is_copied_only_once_shared(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    peer = aws.client("ec2", max_attempts=1)
    peer.meta.events.register(
        "before-sign.ec2.*",
        lambda request, **_: request.headers.add_header("x-moto-account-id", PEER),
    )
    volume_id = peer.create_volume(Size=4, AvailabilityZone=f"{HOME}a")["VolumeId"]
    theirs = peer.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    with pytest.raises(ClientError) as exc:
        _copy(dest, theirs)
    assert _error(exc)[0] == "InvalidSnapshot.NotFound"
    peer.modify_snapshot_attribute(
        SnapshotId=theirs, Attribute="createVolumePermission", OperationType="add",
        UserIds=[ACCOUNT],
    )  # fmt: skip
    copy_id = _copy(dest, theirs)
    assert _describe(dest, copy_id)["OwnerId"] == ACCOUNT
    public = peer.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    peer.modify_snapshot_attribute(
        SnapshotId=public, Attribute="createVolumePermission", OperationType="add",
        GroupNames=["all"],
    )  # fmt: skip
    assert _copy(dest, public)
    assert source()  # our own snapshots are unaffected


def test_tags_from_tag_specifications_are_applied_at_creation(
    aws: LocalAws, ec2: Any, dest: Any, source: Callable[..., str]
) -> None:
    original = source()
    ec2.create_tags(Resources=[original], Tags=[{"Key": "source-only", "Value": "x"}])
    tags = [{"Key": "snapset:copy-of", "Value": original}, {"Key": "team", "Value": "a"}]
    response = dest.copy_snapshot(
        SourceRegion=HOME,
        SourceSnapshotId=original,
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
    )
    assert response["Tags"] == tags
    # while pending, and without the source's tags (a copy copies no tags)
    assert _describe(dest, response["SnapshotId"])["Tags"] == tags
    found = dest.describe_snapshots(
        Filters=[{"Name": "tag:snapset:copy-of", "Values": [original]}]
    )["Snapshots"]
    assert [s["SnapshotId"] for s in found] == [response["SnapshotId"]]

    for spec, fragment in (
        ({"ResourceType": "volume", "Tags": tags}, "'volume' is not a valid taggable"),
        ({"ResourceType": "snapshot", "Tags": [{"Key": "aws:x", "Value": "1"}]}, "reserved"),
        ({"ResourceType": "snapshot", "Tags": [{"Key": "k" * 128, "Value": "1"}]}, "127"),
    ):
        with pytest.raises(ClientError) as exc:
            _copy(dest, original, TagSpecifications=[spec])
        code, status, message = _error(exc)
        assert (code, status) == ("InvalidParameterValue", 400)
        assert fragment in message
    assert len(aws.copies_state()["pending"]) == 1


def test_dry_run_validates_then_answers_dry_run_operation(
    aws: LocalAws, ec2: Any, dest: Any, source: Callable[..., str]
) -> None:
    with pytest.raises(ClientError) as exc:
        _copy(dest, "snap-0123456789abcdef0", DryRun=True)
    assert _error(exc)[0] == "InvalidSnapshot.NotFound"  # validation first
    original = source()
    with pytest.raises(ClientError) as exc:
        _copy(dest, original, DryRun=True)
    assert _error(exc)[:2] == ("DryRunOperation", 412)
    assert aws.copies_state()["pending"] == []
    assert _own(dest) == []

    with pytest.raises(ClientError) as exc:
        ec2.modify_snapshot_attribute(
            SnapshotId=original, Attribute="createVolumePermission", OperationType="add",
            UserIds=[PEER], DryRun=True,
        )  # fmt: skip
    assert _error(exc)[:2] == ("DryRunOperation", 412)
    attribute = ec2.describe_snapshot_attribute(
        SnapshotId=original, Attribute="createVolumePermission"
    )
    assert attribute["CreateVolumePermissions"] == []


# --- KMS keys ----------------------------------------------------------------------------------


def test_encryption_of_the_copy(aws: LocalAws, dest: Any, source: Callable[..., str]) -> None:
    kms = aws.client("kms", region_name=DEST)
    customer = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/dr", TargetKeyId=customer["KeyId"])
    plain, encrypted = source(), source(Encrypted=True)

    copies = {
        "plain": _copy(dest, plain),
        "asked": _copy(dest, plain, Encrypted=True),
        "inherited": _copy(dest, encrypted, Encrypted=False),  # cannot be set to false
        "by-arn": _copy(dest, encrypted, Encrypted=True, KmsKeyId=customer["Arn"]),
        "by-alias": _copy(dest, plain, Encrypted=True, KmsKeyId="alias/dr"),
    }
    described = {name: _describe(dest, copy_id) for name, copy_id in copies.items()}
    assert not described["plain"]["Encrypted"]
    default_key = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]
    assert default_key["KeyManager"] == "AWS"
    assert default_key["Arn"].startswith(f"arn:aws:kms:{DEST}:")
    for name in ("asked", "inherited"):
        assert described[name]["Encrypted"]
        assert described[name]["KmsKeyId"] == default_key["Arn"]  # the destination's default
    for name in ("by-arn", "by-alias"):
        assert described[name]["KmsKeyId"] == customer["Arn"]
    aws.complete_copies()
    states = {s["SnapshotId"]: s["State"] for s in dest.describe_snapshots()["Snapshots"]}
    assert {states[c] for c in copies.values()} == {"completed"}

    with pytest.raises(ClientError) as exc:
        _copy(dest, plain, KmsKeyId=customer["Arn"])
    assert _error(exc)[:2] == ("InvalidParameterDependency", 400)


def test_a_key_the_destination_cannot_use_fails_the_copy_asynchronously(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    home_kms, kms = aws.client("kms"), aws.client("kms", region_name=DEST)
    disabled, deleted = (kms.create_key()["KeyMetadata"] for _ in range(2))
    kms.disable_key(KeyId=disabled["KeyId"])  # (moto's DisableKey takes no ARN)
    kms.schedule_key_deletion(KeyId=deleted["KeyId"], PendingWindowInDays=7)
    asymmetric = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    multi_region = home_kms.create_key(MultiRegion=True)["KeyMetadata"]
    replica = home_kms.replicate_key(KeyId=multi_region["KeyId"], ReplicaRegion=DEST)
    bad_keys = {
        "missing": f"arn:aws:kms:{DEST}:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000",
        "home-region": home_kms.create_key()["KeyMetadata"]["Arn"],
        "home-arn-of-a-replicated-key": multi_region["Arn"],  # the key must be the copy region's
        "no-alias": "alias/nothing-here",
        "disabled": disabled["Arn"],
        "pending-deletion": deleted["Arn"],
        "asymmetric": asymmetric,
    }
    original = source(Encrypted=True)
    # AWS authenticates the key asynchronously: the call is accepted, the copy fails later.
    copies = {
        name: _copy(dest, original, Encrypted=True, KmsKeyId=key) for name, key in bad_keys.items()
    }
    assert {_describe(dest, c)["State"] for c in copies.values()} == {"pending"}
    assert _describe(dest, copies["missing"])["KmsKeyId"] == bad_keys["missing"]
    aws.complete_copies()
    for copy_id in copies.values():
        failed = _describe(dest, copy_id)
        assert (failed["State"], failed["StateMessage"]) == (
            "error",
            "Given key ID is not accessible",
        )
    events = _copy_events(aws)
    assert {e["detail"]["result"] for e in events} == {"failed"}
    assert {e["detail"]["cause"] for e in events} == {"Given key ID is not accessible"}
    assert len(events) == len(copies)

    by_replica = _copy(
        dest, original, Encrypted=True, KmsKeyId=replica["ReplicaKeyMetadata"]["Arn"]
    )
    aws.complete_copies()
    assert _describe(dest, by_replica)["State"] == "completed"

    # the source's own key is needed too: disabled before the copy completes, the copy fails
    source_key = home_kms.create_key()["KeyMetadata"]
    on_source_key = source(Encrypted=True, KmsKeyId=source_key["Arn"])
    doomed = _copy(
        dest, on_source_key, Encrypted=True, KmsKeyId=replica["ReplicaKeyMetadata"]["Arn"]
    )
    home_kms.disable_key(KeyId=source_key["KeyId"])
    aws.complete_copies()
    assert _describe(dest, doomed)["StateMessage"] == "Given key ID is not accessible"


# --- sharing -----------------------------------------------------------------------------------


def _share(ec2: Any, snapshot_id: str, form: str) -> None:
    if form == "OperationType":
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission", OperationType="add",
            UserIds=[PEER],
        )  # fmt: skip
    else:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": PEER}]},
        )


def _shared_with(ec2: Any, snapshot_id: str) -> list[str]:
    permissions = ec2.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="createVolumePermission"
    )["CreateVolumePermissions"]
    return sorted(p["UserId"] for p in permissions if "UserId" in p)


@pytest.mark.parametrize("form", ["OperationType", "CreateVolumePermission"])
def test_a_snapshot_encrypted_with_the_aws_managed_key_is_not_shared(
    aws: LocalAws, ec2: Any, make_instance: Callable[..., Instance], form: str
) -> None:
    aws.set_snapshot_delay(None)
    inst = make_instance(data_volume_tags=({},), encrypted=[True])
    [snap] = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": inst.instance_id, "ExcludeBootVolume": True}
    )["Snapshots"]
    aws.complete_snapshots()
    described = _describe(ec2, snap["SnapshotId"])
    key = aws.client("kms").describe_key(KeyId=described["KmsKeyId"])["KeyMetadata"]
    assert described["Encrypted"]
    assert key["KeyManager"] == "AWS"  # the volume's default key, aws/ebs
    with pytest.raises(ClientError) as exc:
        _share(ec2, snap["SnapshotId"], form)
    assert _error(exc) == (
        "OperationNotPermitted",
        400,
        "Encrypted snapshots with EBS default key cannot be shared",
    )
    assert _shared_with(ec2, snap["SnapshotId"]) == []


@pytest.mark.parametrize("form", ["OperationType", "CreateVolumePermission"])
def test_customer_key_and_unencrypted_snapshots_are_shared(
    aws: LocalAws, ec2: Any, dest: Any, source: Callable[..., str], form: str
) -> None:
    home_key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    customer, plain = source(Encrypted=True, KmsKeyId=home_key), source()
    assert _describe(ec2, customer)["KmsKeyId"] == home_key  # the volume's key
    for snapshot_id in (customer, plain):
        _share(ec2, snapshot_id, form)
        assert _shared_with(ec2, snapshot_id) == [PEER]
    ec2.modify_snapshot_attribute(
        SnapshotId=plain,
        Attribute="createVolumePermission",
        CreateVolumePermission={"Remove": [{"UserId": PEER}]},
    )
    assert _shared_with(ec2, plain) == []

    # a copy re-encrypted with a customer key of the destination shares; one on aws/ebs not
    dest_key = aws.client("kms", region_name=DEST).create_key()["KeyMetadata"]["Arn"]
    shareable = _copy(dest, customer, Encrypted=True, KmsKeyId=dest_key)
    on_default = _copy(dest, customer)
    aws.complete_copies()
    _share(dest, shareable, form)
    assert _shared_with(dest, shareable) == [PEER]
    with pytest.raises(ClientError) as exc:
        _share(dest, on_default, form)
    assert _error(exc)[0] == "OperationNotPermitted"
    with pytest.raises(ClientError) as exc:
        _share(dest, "snap-0123456789abcdef0", form)
    assert _error(exc)[0] == "InvalidSnapshot.NotFound"


# --- control API, reset, budget ----------------------------------------------------------------


def test_the_control_api_refuses_bad_settings_and_applies_none_of_them(aws: LocalAws) -> None:
    for body in (
        {"delay": 1},
        {"concurrent_limit": 0},
        {"delay_seconds": -1},
        {"delay_seconds": 1, "fail_sources": "snap-0123456789abcdef0"},
    ):
        with pytest.raises(LocalAwsError, match="400"):
            aws.set_copies(**body)
    state = aws.copies_state()
    assert (state["delay_seconds"], state["concurrent_limit"], state["fail_sources"]) == (
        0.5,
        20,
        {},
    )


def test_reset_drops_pending_copies_and_settings(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    original = source()
    aws.set_copies(delay_seconds=2, concurrent_limit=1, fail_sources=[original])
    _copy(dest, original)
    aws.complete_copies()
    _copy(dest, original)
    aws.reset()
    state = aws.copies_state()
    assert state == {
        "delay_seconds": 0.5,
        "concurrent_limit": 20,
        "fail_sources": {},
        "pending": [],
        "done": [],
    }
    aws.freeze_clock()
    aws.advance_clock(10)
    assert aws.complete_copies() == []
    assert aws.events() == []


def test_the_aws_budget_throttles_copy_snapshot_and_modify_snapshot_attribute(
    aws: LocalAws, dest: Any, source: Callable[..., str]
) -> None:
    # Neither is named in the EC2 reference's throttling tables: unlisted mutating actions.
    assert EC2_BUCKETS["CopySnapshot"] == (50, 5.0)
    assert EC2_BUCKETS["ModifySnapshotAttribute"] == (50, 5.0)
    original = source()
    aws.set_faults(*aws_budget(1))
    codes = []
    for _ in range(51):
        with pytest.raises(ClientError) as exc:
            _copy(dest, original, DryRun=True)  # a call that takes a token and starts nothing
        codes.append(_error(exc)[0])
    assert codes == ["DryRunOperation"] * 50 + ["RequestLimitExceeded"]
    aws.advance_clock(0.2)  # 5 per second: one token
    with pytest.raises(ClientError) as exc:
        _copy(dest, original, DryRun=True)
    assert _error(exc)[0] == "DryRunOperation"


# --- IAM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iam_server() -> Iterator[LocalAws]:
    server = LocalAws(snapshot_delay=None, enforce_iam=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        server.start()
    try:
        yield server
    finally:
        server.stop()


def test_copies_and_shares_are_checked_under_their_iam_actions(iam_server: LocalAws) -> None:
    admin = iam_server.client("ec2", max_attempts=1)
    volume_id = admin.create_volume(Size=1, AvailabilityZone=f"{HOME}a")["VolumeId"]
    snapshot_id = admin.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    iam = iam_server.client("iam")
    iam.create_user(UserName="describer")

    def allow(name: str, action: str) -> None:
        statement = {"Effect": "Allow", "Action": action, "Resource": "*"}
        iam.put_user_policy(
            UserName="describer",
            PolicyName=name,
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
        )

    allow("describe", "ec2:DescribeSnapshots")
    key = iam.create_access_key(UserName="describer")["AccessKey"]
    credentials = {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }
    home = iam_server.client("ec2", max_attempts=1, **credentials)
    dest = iam_server.client("ec2", max_attempts=1, region_name=DEST, **credentials)

    def copy() -> dict[str, Any]:
        result: dict[str, Any] = dest.copy_snapshot(SourceRegion=HOME, SourceSnapshotId=snapshot_id)
        return result

    def share() -> None:
        home.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission", OperationType="add",
            UserIds=[PEER],
        )  # fmt: skip

    for call, action in ((copy, "ec2:CopySnapshot"), (share, "ec2:ModifySnapshotAttribute")):
        with pytest.raises(ClientError) as exc:
            call()
        assert _error(exc)[0] == "AccessDenied"
        assert action in _error(exc)[2]
    allow("copy", "ec2:CopySnapshot")
    allow("share", "ec2:ModifySnapshotAttribute")
    assert copy()["SnapshotId"]
    share()
