"""Mass generation with the fake frame function: shards, determinism, resume, refusals, faults,
and the shards read back by independent readers (webdataset, numpy, the folder reader)."""

from __future__ import annotations

import errno
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from test_generate_fakes import FakeFrameFn, fake_config, read_tree

from tte2tee_fast.errors import InputError
from tte2tee_fast.generate import writers
from tte2tee_fast.generate.distribute import Split
from tte2tee_fast.generate.run import DatasetConfig, generate_dataset

SIZE = 32


def run(out, n=10, shard_size=4, batch_size=3, fmt="wds", split=None, fn=None, **kw):
    dataset = DatasetConfig(n=n, shard_size=shard_size, format=fmt, **kw)
    fn = fn or FakeFrameFn(size=SIZE)
    return generate_dataset(
        out,
        dataset,
        fake_config(batch_size=batch_size),
        frame_fn=fn,
        split=split or Split(0, 1, "test"),
        progress=False,
    )


def samples(out) -> dict[str, dict[str, bytes]]:
    """Every sample of every tar shard, read with tarfile (key -> {suffix: bytes})."""
    found: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, suffix = m.name.split(".", 1)
                found.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return found


def test_webdataset_reads_the_shards_back_with_masks_and_meta(tmp_path):
    import webdataset as wds

    out = tmp_path / "ds"
    report = run(out, n=10, shard_size=4)
    assert report.complete and report.generated_frames == 10
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    assert len(urls) == 3  # 4 + 4 + 2
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))  # uint8 [H, W]
    assert [r["__key__"] for r in rows] == [f"frame_{i:09d}" for i in range(10)]
    fake = FakeFrameFn(size=SIZE)
    for i, row in enumerate(rows):
        mask = row["mask.png"]
        assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE) and mask.max() == 5
        np.testing.assert_array_equal(row["image.png"], fake(mask[None], np.array([i]))[0])
        meta = row["json"]
        assert meta["index"] == i and meta["seed"] == 0 and meta["backend"] == "fake"
        assert meta["mask_id"] == f"phantom:tee:me4c#{i}"
    # wids-style index and manifest agree with the shards
    index = json.loads((out / "index.json").read_text())
    assert [s["nsamples"] for s in index["shardlist"]] == [4, 4, 2]
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    import hashlib

    for line, url in zip(lines, urls, strict=True):
        assert line["sha256"] == hashlib.sha256(open(url, "rb").read()).hexdigest()
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["totals"] == {"frames": 10, "shards": 3, "format": "wds"}
    assert "numpy" in dataset["software"]


def test_tar_headers_are_fixed_and_members_key_sorted(tmp_path):
    run(tmp_path / "ds", n=3, shard_size=3)
    with tarfile.open(tmp_path / "ds" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and all(n.count(".") >= 1 for n in names)
    assert all("." not in n.split(".", 1)[0] for n in names)  # keys have no dots
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }


def test_frames_do_not_depend_on_batch_size_shard_size_or_rerun(tmp_path):
    a = samples(run(tmp_path / "a", n=11, shard_size=4, batch_size=3).out)
    b = samples(run(tmp_path / "b", n=11, shard_size=5, batch_size=1).out)
    c = samples(run(tmp_path / "c", n=11, shard_size=11, batch_size=8).out)
    assert a == b == c and len(a) == 11
    run(tmp_path / "a2", n=11, shard_size=4, batch_size=7)
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "a2")  # byte-identical folder


def test_split_runs_union_is_one_run_byte_for_byte(tmp_path):
    one = tmp_path / "one"
    run(one, n=13, shard_size=3)
    many = tmp_path / "many"
    reports = [run(many, n=13, shard_size=3, split=Split(i, 3, "test")) for i in (2, 0, 1)]
    assert [r.complete for r in reports] == [False, False, True]
    assert sorted(s.index for r in reports for s in r.missing) == list(range(5))
    assert read_tree(one) == read_tree(many)


def test_resume_generates_only_missing_and_verifies_sha256(tmp_path):
    out = tmp_path / "ds"
    run(out, n=12, shard_size=4)
    reference = read_tree(out)
    (out / "shard-000001.tar").unlink()
    (out / "shard-000002.tar").write_bytes(b"corrupt")
    (out / ".shard-000000.tar.tmp-0123abcd").write_bytes(b"stale")
    (out / "dataset.json").unlink()
    fn = FakeFrameFn(size=SIZE)
    report = run(out, n=12, shard_size=4, fn=fn)
    assert report.removed_temps == 1 and report.recorded == 1
    assert report.bad == ["shard-000001.tar: files missing", "shard-000002.tar: sha256 mismatch"]
    assert sorted({f for call in fn.calls for f in call}) == list(range(4, 12))
    assert read_tree(out) == reference


def test_another_configuration_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "ds"
    run(out, n=8, shard_size=4)
    with pytest.raises(InputError, match=r"dataset\.n: 8 -> 9; dataset\.shard_size: 4 -> 3"):
        run(out, n=9, shard_size=3)
    with pytest.raises(InputError, match=r"frame\.seed: 0 -> 1"):
        generate_dataset(
            out,
            DatasetConfig(n=8, shard_size=4),
            fake_config(seed=1),
            frame_fn=FakeFrameFn(size=SIZE),
            split=Split(0, 1, "t"),
            progress=False,
        )
    # batch size changes no frame, so it is not part of the configuration
    assert run(out, n=8, shard_size=4, batch_size=5).generated_frames == 0


def test_foreign_files_in_out_are_refused(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"not part of a generated dataset \(notes\.txt\)"):
        run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_plan_writes_nothing_and_lists_missing(tmp_path):
    out = tmp_path / "ds"
    dataset = DatasetConfig(n=10, shard_size=4)
    fn = FakeFrameFn(size=SIZE)
    report = generate_dataset(
        out, dataset, fake_config(), frame_fn=fn, split=Split(0, 1, "t"), plan=True
    )
    assert [s.name for s in report.missing] == [f"shard-00000{i}.tar" for i in range(3)]
    assert not out.exists() and fn.calls == []
    run(out, n=10, shard_size=4)
    (out / "shard-000001.tar").unlink()
    report = generate_dataset(
        out, dataset, fake_config(), frame_fn=fn, split=Split(0, 1, "t"), plan=True
    )
    assert [s.name for s in report.missing] == ["shard-000001.tar"] and fn.calls == []


def test_disk_full_mid_shard_leaves_no_shard_and_a_rerun_completes(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    reference = tmp_path / "ref"
    run(reference, n=10, shard_size=4)
    real_add, calls = writers.TarShardWriter.add, {"n": 0}

    def failing_add(self, sample):
        calls["n"] += 1
        if calls["n"] == 6:  # the second frame of shard 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, sample)

    monkeypatch.setattr(writers.TarShardWriter, "add", failing_add)
    with pytest.raises(InputError, match=r"cannot write shard-000001\.tar .*\(disk full\)"):
        run(out, n=10, shard_size=4)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "manifest.jsonl", "shard-000000.tar"]  # no partial shard
    monkeypatch.setattr(writers.TarShardWriter, "add", real_add)
    assert run(out, n=10, shard_size=4).complete
    assert read_tree(out) == read_tree(reference)


def test_npz_shards_load_with_numpy_and_match_the_tar_frames(tmp_path):
    tar = samples(run(tmp_path / "w", n=7, shard_size=4).out)
    out = run(tmp_path / "z", n=7, shard_size=4, fmt="npz").out
    run(tmp_path / "z2", n=7, shard_size=4, fmt="npz", batch_size=2)
    assert read_tree(out) == read_tree(tmp_path / "z2")
    frames = []
    for path in sorted(out.glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            for k, i in enumerate(z["frames"]):
                key = f"frame_{int(i):09d}"
                assert z["keys"][k] == key
                png = np.asarray(Image.open(io.BytesIO(tar[key]["image.png"])))
                np.testing.assert_array_equal(z["images"][k], png)
                assert json.loads(z["meta"][k]) == json.loads(tar[key]["json"])
                frames.append(int(i))
    assert frames == list(range(7))


def test_png_folder_reads_back_with_the_folder_reader(tmp_path):
    from tte2tee_fast.data.folder import FolderSource

    tar = samples(run(tmp_path / "w", n=6, shard_size=4).out)
    out = run(tmp_path / "p", n=6, shard_size=4, fmt="png").out
    src = FolderSource(out)  # schema from card.json
    assert src.schema.name == "tee" and len(src) == 6
    for k, name in enumerate(src.names):
        image, mask = src.load(k)
        np.testing.assert_array_equal(
            image, np.asarray(Image.open(io.BytesIO(tar[name]["image.png"])))
        )
        np.testing.assert_array_equal(
            mask, np.asarray(Image.open(io.BytesIO(tar[name]["mask.png"])))
        )
    (out / "masks" / "frame_000000005.png").unlink()
    report = run(out, n=6, shard_size=4, fmt="png")
    assert report.bad == ["shard-000001: files missing"] and report.generated_frames == 2


def test_hugging_face_datasets_webdataset_loader_reads_the_shards(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = run(tmp_path / "ds", n=6, shard_size=4).out
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": urls}, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 6 and ds[0]["__key__"] == "frame_000000000"
    tar = samples(out)
    for row in ds:
        key = row["__key__"]
        np.testing.assert_array_equal(
            np.asarray(row["image.png"]), np.asarray(Image.open(io.BytesIO(tar[key]["image.png"])))
        )
        assert row["json"]["index"] == int(key.split("_")[1])


def test_an_out_path_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"a_file/ds: "):
        run(blocker / "ds")
    assert blocker.read_text() == "x"


def test_a_denoiser_failure_mid_shard_leaves_no_temporaries(tmp_path):
    class Failing(FakeFrameFn):
        def __call__(self, labels, frames):
            if int(frames[0]) >= 5:
                raise InputError("engine broke")
            return super().__call__(labels, frames)

    out = tmp_path / "ds"
    with pytest.raises(InputError, match="engine broke"):
        run(out, n=10, shard_size=4, batch_size=1, fn=Failing(size=SIZE))
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "manifest.jsonl",
        "shard-000000.tar",
    ]
