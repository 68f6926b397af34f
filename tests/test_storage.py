"""Plain tasks' artifact helpers: bytes in and out, and a delete that stays in the root."""

from __future__ import annotations

import pytest
from test_cloud import BUCKET, client, moto_server, sagemaker  # noqa: F401

from smtask import storage
from smtask.errors import SmtaskError


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    return root, {"mode": "local", "local": {"artifacts": root.as_uri()}}


def test_bytes_round_trip_and_a_folder_reads_as_its_files_joined(local):
    root, params = local
    storage.write_bytes(f"{root.as_uri()}/p/run/prep/b.bin", b"\x00\x01", params)
    storage.write_bytes(f"{root.as_uri()}/p/run/prep/a.bin", b"\xff", params)
    assert storage.read_bytes(f"{root.as_uri()}/p/run/prep", params) == b"\xff\x00\x01"


def test_remove_deletes_a_folder_inside_the_root_and_says_how_many_files(local):
    root, params = local
    for name in ("x/1", "x/y/2", "keep"):
        storage.write_text(f"{root.as_uri()}/p/{name}", "data", params)
    assert storage.remove(f"{root.as_uri()}/p/x", params) == 2
    assert sorted(p.name for p in (root / "p").iterdir()) == ["keep"]


@pytest.mark.parametrize("target", ["outside", "root", "link"])
def test_remove_refuses_the_root_itself_and_anything_outside_it(local, tmp_path, target):
    root, params = local
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (root / "link").symlink_to(outside)
    uri = {"outside": outside.as_uri(), "root": root.as_uri(),
           "link": f"{root.as_uri()}/link"}[target]
    with pytest.raises(SmtaskError, match="refusing to (write or )?delete"):
        storage.remove(uri, params)
    assert (outside / "precious.txt").read_text() == "keep me"


def test_remove_on_s3_deletes_under_the_artifacts_prefix_only(sagemaker):  # noqa: F811
    params = {"mode": "sagemaker", "artifacts": f"s3://{BUCKET}/pipelines"}
    s3 = client("s3")
    for key in ("pipelines/p/run/prep/a", "pipelines/p/run/prep/b", "other/c"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    assert storage.read_bytes(f"s3://{BUCKET}/pipelines/p/run/prep/", params) == b"xx"
    for refused in (f"s3://{BUCKET}/other/", f"s3://{BUCKET}/pipelines/../other/",
                    f"s3://{BUCKET}/pipelines"):
        with pytest.raises(SmtaskError, match="refusing to delete"):
            storage.remove(refused, params)
    assert storage.remove(f"s3://{BUCKET}/pipelines/p/run/prep/", params) == 2
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == ["other/c"]
