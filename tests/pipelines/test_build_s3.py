"""The Ray Data build with S3 in and S3 out, against a real moto server on loopback.

pyarrow's S3FileSystem (in the driver and in the Ray workers) and boto3 talk to the moto server
over HTTP, exactly as they would to MinIO or AWS. The server checks signatures: only requests
signed with an IAM key created for the test get through (moto accepts anything by default, which
would let a worker without credentials pass unnoticed). That key is put in the driver's
environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) *after* the local Ray cluster has
started, so the workers only have it because the build forwards ``AWS_*`` variables to them.

Everything is checked twice: through :class:`pipelines.dataset.Dataset` and by listing and
reading the raw objects with boto3. Clips are cut to ``N`` frames to keep the module short.
"""

from __future__ import annotations

import csv
import io

import boto3
import botocore.exceptions
import pyarrow.parquet as pq
import pytest

from pipelines.build import build
from pipelines.build_config import BuildConfig, Resources
from pipelines.dataset import Dataset
from pipelines.storage import S3Options
from tests.conftest import CLIPS
from tests.services import AWS_UNSET, moto_server, patched_environ
from workers.clip import ClipConfig, clip_id_for

pytestmark = pytest.mark.timeout(600)

N = 20  # frames per clip
BUCKET = "parley-test"
GOOD = CLIPS[:2]
RES = Resources(cpus_per_worker=0.5, num_workers=2)
CLIP = ClipConfig(max_frames=N)


def uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def objects(client, prefix: str = "") -> dict[str, tuple]:
    """{key: (LastModified, ETag, Size)} of every object under ``prefix`` (paginated)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["LastModified"], o["ETag"], o["Size"])
    return out


def read_parquet(client, key: str):
    """A Parquet object read straight from the bucket (no pipelines code involved)."""
    return pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def hidden(keys) -> list[str]:
    """Keys with a hidden / temporary path component (``.x`` or ``_x``) or a directory marker."""
    return [k for k in keys if k.endswith("/") or any(part.startswith((".", "_")) for part in k.split("/"))]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster: the one already running in this process, else a new one (stopped after)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def s3(ray_cluster, tmp_path_factory):
    """A moto server with a bucket holding 2 real clips and a bad one under ``clips/``.

    Yields (S3Options, boto3 client). The AWS credentials are set only now, after Ray started.
    """
    with moto_server(tmp_path_factory.mktemp("moto"), require_auth=True) as server, \
            patched_environ(server.credentials, AWS_UNSET):
        opts = S3Options(endpoint_url=server.url)
        client = opts.boto3_client()
        with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId"):  # the key matters
            boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing").list_buckets()
        client.create_bucket(Bucket=BUCKET)
        for c in GOOD:
            client.upload_file(str(c), BUCKET, f"clips/{c.name}")
        client.put_object(Bucket=BUCKET, Key="clips/broken.mp4", Body=b"this is not a video\n")
        yield opts, client


@pytest.fixture(scope="module")
def built(s3):
    """The reference build: ``s3://bucket/clips`` -> ``s3://bucket/ds``; its report, progress rows, objects."""
    opts, client = s3
    rows: list[dict] = []
    config = BuildConfig(inputs=[uri("clips")], output=uri("ds"), clip=CLIP, resources=RES, s3=opts)
    report = build(config, on_row=rows.append)
    return config, report, rows, objects(client, "ds/")


def test_build_reads_clips_from_s3_and_writes_every_table_to_s3(s3, built):
    opts, client = s3
    _, report, progress, objs = built
    ids = {c.stem: clip_id_for(uri(f"clips/{c.name}")) for c in GOOD}
    broken = clip_id_for(uri("clips/broken.mp4"))
    stems = sorted(ids)

    assert report.listed == 3 and report.skipped == 0 and len(progress) == 3
    assert len(report.ok) == 2 and len(report.failed) == 1, report.built
    assert report.ok_total == 2 and report.failed_total == 1 and report.frames == 2 * N
    assert report.identities == stems and sorted(report.qc_written) == stems

    # the raw objects: exactly the layout of DESIGN.md, nothing temporary or hidden anywhere in the bucket
    expected = {f"ds/clips/{i}.parquet" for i in [*ids.values(), broken]}
    expected |= {f"ds/frames/identity={s}/{i}.parquet" for s, i in ids.items()}
    expected |= {"ds/identities/identities.parquet", "ds/qc/quality.csv"}
    expected |= {f"ds/qc/{s}.{ext}" for s in stems for ext in ("png", "json")}
    assert set(objs) == expected
    assert not hidden(objects(client))
    for s, i in ids.items():
        raw = read_parquet(client, f"ds/frames/identity={s}/{i}.parquet")
        assert raw.num_rows == N and set(raw.column("clip_id").to_pylist()) == {i}
    raw_clips = {r["clip_id"]: r for r in read_parquet(client, f"ds/clips/{broken}.parquet").to_pylist()}
    assert raw_clips[broken]["status"] == "failed"
    assert read_parquet(client, "ds/identities/identities.parquet").num_rows == 2
    png = client.get_object(Bucket=BUCKET, Key=f"ds/qc/{stems[0]}.png")["Body"].read()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    quality = list(csv.DictReader(io.StringIO(client.get_object(Bucket=BUCKET, Key="ds/qc/quality.csv")["Body"]
                                              .read().decode())))
    assert sorted(r["identity"] for r in quality) == stems

    # the same through the dataset reader
    ds = Dataset(uri("ds"), S3Options(endpoint_url=opts.endpoint_url))
    clips = ds.clip_rows()
    assert sorted(clips) == sorted([*ids.values(), broken])
    bad = clips[broken]
    assert bad["status"] == "failed" and bad["error_kind"] == "input" and bad["source_uri"] == uri("clips/broken.mp4")
    assert "not a readable media file" in bad["error"], bad["error"]
    assert bad["identity"] == "broken" and bad["n_frames"] == 0
    for s, i in ids.items():
        row = clips[i]
        assert row["status"] == "ok" and row["error"] is None and row["n_frames"] == N, row
        assert row["source_uri"] == uri(f"clips/{s}.mp4") and row["identity"] == s
        assert row["download_s"] is not None and row["download_s"] >= 0
    assert ds.identity_names() == stems
    for s, i in ids.items():
        frames = ds.frames(s, columns=["identity", "clip_id", "frame_index", "role"])
        assert frames.column("frame_index").to_pylist() == list(range(N))
        assert set(frames.column("clip_id").to_pylist()) == {i}
        assert set(frames.column("identity").to_pylist()) == {s}
        assert set(frames.column("role").to_pylist()) == {"solo"}
    idents = ds.identities().to_pylist()
    assert [r["identity"] for r in idents] == stems
    assert all(r["n_clips"] == 1 and r["n_rows"] == N and r["background_png"][:4] == b"\x89PNG" for r in idents)


def test_rerun_builds_nothing_and_rewrites_no_object(s3, built):
    _, client = s3
    config, _, _, before = built
    report = build(config)
    assert report.built == [] and report.skipped == 3 and report.listed == 3
    assert report.ok_total == 2 and report.failed_total == 1 and report.qc_written == []
    assert objects(client, "ds/") == before  # same keys, LastModified, ETag and size


def test_manifest_on_s3_names_s3_clips_under_one_identity_and_role(s3):
    """A manifest stored on S3: one clip by s3:// URI, one by a path relative to the manifest."""
    opts, client = s3
    a, b = GOOD
    manifest = f"source_uri,identity,role\n{uri(f'clips/{a.name}')},alice,speaker\nclips/{b.name},alice,speaker\n"
    client.put_object(Bucket=BUCKET, Key="alice.csv", Body=manifest.encode())
    ids = sorted(clip_id_for(uri(f"clips/{c.name}")) for c in GOOD)

    report = build(BuildConfig(inputs=[uri("alice.csv")], output=uri("alice-ds"), clip=CLIP, resources=RES, s3=opts))
    assert report.listed == 2 and len(report.ok) == 2 and not report.failed, report.built
    assert report.identities == ["alice"]

    ds = Dataset(uri("alice-ds"), S3Options(endpoint_url=opts.endpoint_url))
    clips = ds.clip_rows()
    assert sorted(clips) == ids
    assert {r["source_uri"] for r in clips.values()} == {uri(f"clips/{c.name}") for c in GOOD}
    assert all(r["identity"] == "alice" and r["role"] == "speaker" and r["status"] == "ok" for r in clips.values())
    assert ds.identity_names() == ["alice"]
    alice = ds.identity("alice")
    assert alice["n_clips"] == 2 and alice["clips"] == ids and alice["n_rows"] == 2 * N
    frames = ds.frames("alice", columns=["identity", "role"])
    assert frames.num_rows == 2 * N
    assert set(frames.column("role").to_pylist()) == {"speaker"}
    assert set(frames.column("identity").to_pylist()) == {"alice"}

    objs = objects(client, "alice-ds/")
    assert {k for k in objs if k.startswith("alice-ds/frames/")} == {
        f"alice-ds/frames/identity=alice/{i}.parquet" for i in ids}
    assert {"alice-ds/qc/alice.png", "alice-ds/qc/alice.json", "alice-ds/qc/quality.csv"} <= set(objs)
    assert not hidden(objects(client))
