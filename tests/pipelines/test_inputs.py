"""Listing inputs (directories, globs, manifests) and deciding which clips a re-run builds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.build import rebuild_reason
from pipelines.inputs import ClipSpec, InputError, list_inputs, read_manifest
from pipelines.storage import Storage
from workers.clip import BUILDER_VERSION, ClipConfig, clip_config_json, clip_id_for


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_directory_lists_videos_recursively_with_stem_identities(tmp_path):
    a = touch(tmp_path / "a b.mp4")
    b = touch(tmp_path / "sub" / "Bob.MOV")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.mp4")
    specs = list_inputs(str(tmp_path))
    assert sorted(s.source_uri for s in specs) == sorted([str(a), str(b)])
    assert {s.identity for s in specs} == {"a_b", "Bob"}  # made safe for partition names
    assert all(s.clip_id == clip_id_for(s.source_uri) for s in specs)


def test_glob_and_missing_input(tmp_path):
    a = touch(tmp_path / "x1.mp4")
    touch(tmp_path / "y1.mp4")
    assert [s.source_uri for s in list_inputs(str(tmp_path / "x*.mp4"))] == [str(a)]
    with pytest.raises(InputError, match="no such file or directory"):
        list_inputs(str(tmp_path / "nope"))


def test_manifest_relative_paths_roles_and_duplicates(tmp_path):
    a = touch(tmp_path / "clips" / "a.mp4")
    m = tmp_path / "m.csv"
    m.write_text("source_uri,identity,role\nclips/a.mp4,alice,speaker\n" f"{a},alice,speaker\n"
                 "s3://bucket/k/../k/b.mp4,bob,listener\n")
    specs = read_manifest(str(m))
    assert specs[0] == ClipSpec(str(a), "alice", "speaker")
    assert specs[2] == ClipSpec("s3://bucket/k/b.mp4", "bob", "listener")
    assert len(list_inputs(str(m))) == 2  # the same clip twice is built once


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path,identity\na.mp4,x\n", "needs a header with 'source_uri'"),
        ("source_uri,identity\n,x\n", ":2: empty source_uri"),
        ("source_uri,identity,role\na.mp4,x,narrator\n", "role 'narrator'"),
        ("source_uri,identity\na.mp4,../etc\n", "identity '../etc'"),
        ("source_uri,identiy\na.mp4,alice\n", "'identity' missing"),
        ("source_uri,identity\na.mp4,\n", ":2: empty identity"),
        ("source_uri,identity\na.mp4,alice\nb.mp4,bob,extra\n", ":3: 3 fields but the header has 2"),
    ],
)
def test_bad_manifest_names_file_line_and_reason(tmp_path, text, match):
    m = tmp_path / "bad.csv"
    m.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        list_inputs(str(m))
    assert str(m) in str(err.value)


def test_clip_listed_under_two_identities_is_an_error(tmp_path):
    a = touch(tmp_path / "a.mp4")
    m = tmp_path / "m.csv"
    m.write_text(f"source_uri,identity\n{a},alice\n{a},bob\n")
    with pytest.raises(InputError, match="listed twice"):
        list_inputs(str(m))


def test_rebuild_reason():
    cfg = clip_config_json(ClipConfig())
    spec = ClipSpec("/x/a.mp4", "a")
    ok = {"status": "ok", "builder_version": BUILDER_VERSION, "config_json": cfg, "identity": "a", "role": None}
    assert rebuild_reason(spec, None, cfg) == "new"
    assert rebuild_reason(spec, ok, cfg) is None
    assert rebuild_reason(spec, ok, cfg, force=True) == "forced"
    assert "built by 0.0.1" in rebuild_reason(spec, {**ok, "builder_version": "0.0.1"}, cfg)
    assert rebuild_reason(spec, ok, clip_config_json(ClipConfig(max_frames=5))) == "settings changed"
    assert rebuild_reason(ClipSpec("/x/a.mp4", "b"), ok, cfg) == "identity or role changed"
    bad_input = {**ok, "status": "failed", "error_kind": "input"}
    assert rebuild_reason(spec, bad_input, cfg) is None
    assert rebuild_reason(spec, bad_input, cfg, retry_failed=True) == "retrying failed"
    assert rebuild_reason(spec, {**bad_input, "error_kind": "internal"}, cfg) is not None


def test_storage_atomic_writes_and_listing(tmp_path):
    st = Storage(tmp_path / "root")
    st.write_table("t/a.parquet", pa.table({"x": [1, 2]}))
    st.write_bytes("t/b.bin", b"abc")
    assert st.list_files("t") == ["t/a.parquet", "t/b.bin"]
    assert st.list_files("t", suffix=".parquet") == ["t/a.parquet"]
    assert st.read_table("t/a.parquet").column("x").to_pylist() == [1, 2]
    assert not [p for p in (tmp_path / "root").rglob(".*")]  # no temporary left
    with pytest.raises(ZeroDivisionError), st._atomic("t/c.bin") as p:  # a failed write leaves nothing
        Path(p).write_bytes(b"partial")
        raise ZeroDivisionError
    assert not st.exists("t/c.bin") and not [p for p in (tmp_path / "root").rglob(".*")]
    st.delete("t/b.bin")
    st.delete("t/b.bin")  # deleting twice is fine
    assert st.list_files("t") == ["t/a.parquet"] and st.list_files("missing") == []
    assert Storage("s3://bucket/pre/fix/").uri == "s3://bucket/pre/fix"


def test_sweep_deletes_only_old_temporaries(tmp_path):
    import os
    import time

    st = Storage(tmp_path)
    (tmp_path / "frames" / "identity=a").mkdir(parents=True)
    old = tmp_path / "frames" / "identity=a" / ".x.parquet.1234abcd.tmp"
    young = tmp_path / "frames" / "identity=a" / ".y.parquet.5678abcd.tmp"
    keep = tmp_path / "frames" / "identity=a" / "x.parquet"
    for p in (old, young, keep):
        p.write_bytes(b"1")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert st.sweep_temporaries("frames") == 1
    assert not old.exists() and young.exists() and keep.exists()


def test_names_that_become_one_identity_are_an_error_naming_both(tmp_path):
    """josé / josè (accents), and one stem in two folders, would merge two people: an error naming both files."""
    a = touch(tmp_path / "in" / "josé.mp4")
    b = touch(tmp_path / "in" / "josè.mp4")
    with pytest.raises(InputError, match="both become identity 'jose'") as err:
        list_inputs(str(tmp_path / "in"))
    assert str(a) in str(err.value) and str(b) in str(err.value)
    c = touch(tmp_path / "two" / "a" / "bob.mp4")
    d = touch(tmp_path / "two" / "b" / "bob.mp4")
    with pytest.raises(InputError, match="both become identity 'bob'") as err:
        list_inputs(str(tmp_path / "two"))
    assert str(c) in str(err.value) and str(d) in str(err.value)
    e = touch(tmp_path / "one" / "jos .mp4")  # outer spaces are stripped, not turned into _
    assert [s.identity for s in list_inputs(str(e))] == ["jos"]


def test_a_manifest_may_name_one_person_in_several_clips_but_not_merge_a_file_name(tmp_path):
    """The manifest's own identity spans clips; a directory clip whose stem matches it is an error."""
    a = touch(tmp_path / "m" / "one.mp4")
    b = touch(tmp_path / "m" / "two.mp4")
    m = tmp_path / "m.csv"
    m.write_text(f"source_uri,identity\n{a},alice\n{b},alice\n")
    assert {s.identity for s in list_inputs(str(m))} == {"alice"}
    touch(tmp_path / "d" / "alice.mp4")
    with pytest.raises(InputError, match="both become identity 'alice'"):
        list_inputs([str(m), str(tmp_path / "d")])


def test_symlink_keeps_its_own_name_and_paths_resolve_before_comparison(tmp_path):
    """A link named bob.mp4 to x123.mp4 is identity bob (built from the target); a relative and an absolute
    path with '..' to one file are one clip."""
    target = touch(tmp_path / "store" / "x123.mp4")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "bob.mp4").symlink_to(target)
    specs = list_inputs(str(tmp_path / "links"))
    assert [(s.identity, s.source_uri) for s in specs] == [("bob", str(target))]
    m = tmp_path / "m.csv"
    m.write_text(f"source_uri,identity\nstore/x123.mp4,alice\n{tmp_path}/links/../store/x123.mp4,alice\n")
    assert [s.source_uri for s in list_inputs(str(m))] == [str(target)]
    m.write_text(f"source_uri,identity\nstore/x123.mp4,alice\n{tmp_path}/links/../store/x123.mp4,carol\n")
    with pytest.raises(InputError, match="listed twice"):
        list_inputs(str(m))


def test_credentials_reach_only_workers_on_this_machine(monkeypatch):
    """Keys and tokens are handed to workers only when the cluster is this machine (or asked for); settings
    always are."""
    from pipelines import ray_env

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("PARLEY_ASSETS", "/assets")
    monkeypatch.setattr(ray_env, "single_machine", lambda: True)
    assert {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_REGION"} <= set(ray_env.forwarded_env())
    monkeypatch.setattr(ray_env, "single_machine", lambda: False)  # a cluster of several machines (simulated)
    env = ray_env.forwarded_env(("PARLEY_", "AWS_"))
    assert env["AWS_REGION"] == "eu-west-1" and env["PARLEY_ASSETS"] == "/assets"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env
    monkeypatch.setenv(ray_env.FORWARD_CREDENTIALS, "1")
    assert ray_env.forwarded_env()["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"


def test_manifest_names_the_people_of_a_clip_left_to_right(tmp_path):
    a = touch(tmp_path / "talk.mp4")
    m = tmp_path / "m.csv"
    m.write_text("source_uri,identity\ntalk.mp4,anchor|guest\n")
    assert list_inputs(str(m)) == [ClipSpec(str(a), "anchor|guest")]
    m.write_text("source_uri,identity\ntalk.mp4,anchor|bad name\n")
    with pytest.raises(InputError, match=r"m.csv:2: identity 'bad name' must match .*joined by '\|'"):
        list_inputs(str(m))
    m.write_text("source_uri,identity\ntalk.mp4,anchor|anchor\n")
    with pytest.raises(InputError, match="names one person twice"):
        list_inputs(str(m))


def test_roles_file_goes_with_its_clips_and_a_change_rebuilds_them(tmp_path, caplog):
    import json

    a = touch(tmp_path / "clips" / "talk.mp4")
    touch(tmp_path / "clips" / "solo.mp4")
    roles = tmp_path / "roles.csv"
    roles.write_text("source_uri,start_s,end_s,speaker\nclips/talk.mp4,0,2.5,guest\nclips/talk.mp4,2.5,4,none\n"
                     "clips/elsewhere.mp4,0,1,p0\n")
    specs = {s.identity: s for s in list_inputs(str(tmp_path / "clips"), roles=str(roles))}
    assert json.loads(specs["talk"].roles) == [[0.0, 2.5, "guest"], [2.5, 4.0, "none"]]
    assert specs["solo"].roles is None
    assert "not listed" in caplog.text  # the row for a clip outside this build is reported, not fatal
    cfg = clip_config_json(ClipConfig())
    row = {"builder_version": BUILDER_VERSION, "config_json": cfg, "identity": "talk", "role": None,
           "status": "ok", "role_overrides": specs["talk"].roles}
    assert rebuild_reason(specs["talk"], row, cfg) is None
    assert rebuild_reason(ClipSpec(str(a), "talk"), row, cfg) == "hand-checked roles changed"
    for bad, why in [("clips/talk.mp4,2,1,guest", "empty or negative"), ("clips/talk.mp4,x,1,guest", "seconds"),
                     (",0,1,guest", "empty source_uri")]:
        roles.write_text(f"source_uri,start_s,end_s,speaker\n{bad}\n")
        with pytest.raises(InputError, match=f"roles.csv:2: .*{why}"):
            list_inputs(str(tmp_path / "clips"), roles=str(roles))
    roles.write_text("source_uri,from,to,who\n")
    with pytest.raises(InputError, match="needs the header source_uri,start_s,end_s,speaker"):
        list_inputs(str(tmp_path / "clips"), roles=str(roles))
