"""Readers trust only committed clips; `parley dataset check` finds and repairs what a killed or concurrent
build leaves; a second build into one output is refused (issue 34, items 5, 7 and 12)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main as cli
from pipelines import dataset as D
from pipelines.build import build
from pipelines.build_config import BuildConfig, Resources
from pipelines.check import QUARANTINE, check_dataset
from pipelines.inputs import InputError
from pipelines.layout import clip_path, frames_path
from pipelines.lease import Lease, LeaseError
from pipelines.storage import S3Options, Storage
from tests.conftest import CLIPS, build_small_dataset
from tests.services import AWS_UNSET, moto_server, patched_environ
from workers.clip import ClipConfig

pytestmark = pytest.mark.timeout(600)

STEMS = [CLIPS[0].stem, CLIPS[1].stem]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A real two-identity dataset of 8 frames per clip (no Ray); tests work on copies."""
    return build_small_dataset(tmp_path_factory.mktemp("integrity") / "ds", STEMS, max_frames=8)


@pytest.fixture
def ds(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "ds"))


def cid_of(root: Path, identity: str) -> str:
    return D.Dataset(str(root)).committed()[identity][0]


def test_orphaned_frame_files_are_never_read_and_check_fix_deletes_them(ds):
    """A frame file no committed clip names (a killed build's) is invisible to readers; check reports it and
    --fix deletes it."""
    a, b = STEMS
    cid = cid_of(ds, a)
    src = ds / frames_path(a, cid)
    (ds / "frames" / "identity=mallory").mkdir()
    shutil.copy(src, ds / frames_path("mallory", cid))  # the clip's rows under an identity it never had
    shutil.copy(src, ds / frames_path(a, "deadbeefdeadbeef"))  # a clip that has no row
    dset = D.Dataset(str(ds))
    assert dset.identity_names() == sorted(STEMS)
    assert dset.frames(a, columns=["frame_index"]).num_rows == 8  # not 16
    with pytest.raises(KeyError, match="no identity 'mallory'"):
        dset.frames("mallory")
    report = check_dataset(Storage(ds))
    assert sorted(p.path for p in report.problems if p.kind == "orphan") == sorted(
        [frames_path("mallory", cid), frames_path(a, "deadbeefdeadbeef")])
    assert cli(["dataset", "check", str(ds)]) == 1
    assert cli(["dataset", "check", str(ds), "--fix"]) == 0
    assert not (ds / frames_path("mallory", cid)).exists() and src.exists()
    assert check_dataset(Storage(ds)).ok
    assert b in D.Dataset(str(ds)).identity_names()


def test_check_finds_missing_short_and_foreign_frame_files_and_fix_rebuilds_them(ds):
    """A committed clip without its file, with fewer rows than its row says, or with another schema is reported;
    --fix moves its row aside (the next build builds it again) and rewrites identities/."""
    a, b = STEMS
    ca, cb = cid_of(ds, a), cid_of(ds, b)
    (ds / frames_path(a, ca)).unlink()
    t = pq.read_table(ds / frames_path(b, cb))
    pq.write_table(t.slice(0, 3), ds / frames_path(b, cb))
    report = check_dataset(Storage(ds))
    kinds = {p.kind: p.path for p in report.problems}
    assert kinds["missing_frames"] == frames_path(a, ca)
    assert kinds["row_count"] == frames_path(b, cb) and "3 rows" in next(
        p.detail for p in report.problems if p.kind == "row_count")
    fixed = check_dataset(Storage(ds), fix=True)
    assert any("builds it again" in f for f in fixed.fixed)
    after = D.Dataset(str(ds))
    assert after.identity_names() == [] and not after.clip_rows()
    assert len(list((ds / QUARANTINE).iterdir())) == 2
    assert after.identities().num_rows == 0
    assert check_dataset(Storage(ds)).ok


def test_corrupt_clip_row_is_skipped_with_a_warning_and_rebuilt_by_the_next_build(ray_local, ds, tmp_path):
    """A clips/ file that is not Parquet no longer fails every reader with ArrowInvalid: it is skipped and
    listed; the next build moves it aside and builds the clip again."""
    a, _ = STEMS
    cid = cid_of(ds, a)
    (ds / clip_path(cid)).write_bytes(b"PAR1 this is not parquet")
    dset = D.Dataset(str(ds))
    rows = dset.clip_rows()
    assert cid not in rows and len(rows) == 1 and dset.unreadable == [clip_path(cid)]
    assert [p.kind for p in check_dataset(Storage(ds)).problems][:1] == ["unreadable_clip_row"]
    m = tmp_path / "m.csv"  # the dataset's clip ids are those of the shared paths
    m.write_text(f"source_uri,identity\n{CLIPS[0]},{a}\n")
    report = build(BuildConfig(inputs=[str(m)], output=str(ds), clip=ClipConfig(max_frames=8), qc=False,
                               resources=Resources(cpus_per_worker=0.5, num_workers=1, memory_per_worker_gb=1.0)))
    assert [r["status"] for r in report.built] == ["ok"]
    assert D.Dataset(str(ds)).clip_rows()[cid]["status"] == "ok"
    assert len(list((ds / QUARANTINE).iterdir())) == 1


def test_output_that_is_a_file_fails_before_anything_starts(tmp_path):
    """An output path that is a file is a one-line error before inputs are built or Ray starts."""
    f = tmp_path / "out.txt"
    f.write_text("x")
    t0 = time.monotonic()
    with pytest.raises(InputError, match="the output is a file"):
        build(BuildConfig(inputs=[str(CLIPS[0])], output=str(f)))
    assert time.monotonic() - t0 < 5
    assert cli(["build-dataset", "--input", str(CLIPS[0]), "--output", str(f)]) == 2


def test_a_second_build_into_one_output_is_refused_and_a_dead_holder_blocks_nothing(ds):
    """While a build holds the lease another is refused, naming the holder; the lease dies with its process."""
    with Lease(Storage(ds), "first-build"):
        with pytest.raises(LeaseError, match="another build is writing this dataset.*first-build"):
            build(BuildConfig(inputs=[str(CLIPS[0])], output=str(ds)))
        assert cli(["build-dataset", "--input", str(CLIPS[0]), "--output", str(ds)]) == 2
        assert cli(["dataset", "check", str(ds), "--fix"]) == 2
    import subprocess
    import sys

    # a holder killed outright: the kernel drops its lock, the next lease is granted
    code = (f"import os; from pipelines.lease import Lease; from pipelines.storage import Storage; "
            f"Lease(Storage({str(ds)!r}), 'killed').__enter__(); os._exit(9)")
    subprocess.run([sys.executable, "-c", code], check=False)
    with Lease(Storage(ds), "next"):
        pass


def test_s3_lease_is_exclusive_renewed_and_taken_over_when_stale(tmp_path):
    """On S3 the lease is a conditional put: a second holder is refused; one not renewed past stale_s is taken
    over (compare-and-swap on its ETag); release deletes only our own lease."""
    (tmp_path / "moto").mkdir()
    with moto_server(tmp_path / "moto", require_auth=True) as server, patched_environ(server.credentials, AWS_UNSET):
        opts = S3Options(endpoint_url=server.url)
        client = opts.boto3_client()
        client.create_bucket(Bucket="lease-test")
        root = Storage("s3://lease-test/ds", opts)
        first = Lease(root, "first", stale_s=60.0, renew_s=0.5).__enter__()
        with pytest.raises(LeaseError, match="first"):
            Lease(root, "second", stale_s=60.0).__enter__()
        time.sleep(1.2)  # renewed meanwhile: still fresh
        with pytest.raises(LeaseError, match="first"):
            Lease(root, "third", stale_s=1.0).__enter__()
        first._stop.set()  # the holder stops renewing (as if it died)
        time.sleep(1.5)
        with Lease(root, "fourth", stale_s=1.0) as fourth:
            assert fourth._etag
            first._thread = None  # the dead holder's release must not delete the new lease
            first.release()
            assert client.head_object(Bucket="lease-test", Key="ds/_build/lease.json")["ETag"] == fourth._etag
        assert "Contents" not in client.list_objects_v2(Bucket="lease-test", Prefix="ds/_build/")
