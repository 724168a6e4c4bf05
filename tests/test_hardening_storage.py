"""Storage under stress: the results file shared by concurrent writers, rows and shards changed on disk, two
``sdekit sample`` runs on one folder, torchrun variables set in part.

The concurrency tests run real processes on one file or folder; what they assert is deterministic (no row
lost, none twice, the samples file equal to a single-process run bit for bit), whatever the interleaving.
"""

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from sdekit import InvalidParameterError, study
from sdekit._sharding import Shard, ShardStore, dist_context
from sdekit._study_engine._results import append_row, read_results, row_checksum, write_in_order
from sdekit.cli import main
from sdekit.studies import GaussianProblem

pytestmark = pytest.mark.usefixtures("single_thread")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _mp():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _warnings(err):
    return [line for line in err.splitlines() if line.startswith("sdekit: warning:")]


# -- the results file under concurrent writers -------------------------------------------------------------
def _writer(path, who, rows, start):
    """Append ``rows`` rows of keys ``who-i``, rewriting the file in this writer's order every fifth row (what
    a study does at its end), as fast as it can, all writers at once."""
    start.wait()
    mine = []
    for i in range(rows):
        key = f"{who}-{i:03d}"
        append_row(path, dict(key=key, who=who, i=i, x=i / 7))
        mine.append(key)
        if i % 5 == 4:
            write_in_order(path, mine)


def test_concurrent_appends_and_rewrites_lose_no_row(tmp_path):
    path = str(tmp_path / "results.jsonl")
    ctx = _mp()
    start = ctx.Event()
    writers, rows = 4, 40
    procs = [ctx.Process(target=_writer, args=(path, f"w{w}", rows, start)) for w in range(writers)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = [json.loads(line)["key"] for line in open(path, encoding="utf-8").read().splitlines()]
    expected = {f"w{w}-{i:03d}" for w in range(writers) for i in range(rows)}
    assert len(keys) == len(set(keys)) == writers * rows                  # none twice
    assert set(keys) == expected == set(read_results(path))              # none lost, every checksum whole


SLOW_STUDY = textwrap.dedent('''
    import json, sys, time, torch, sdekit
    from sdekit.studies import GaussianProblem
    torch.set_num_threads(1)

    class Slow(GaussianProblem):
        def measures(self, x, exact, seed):
            time.sleep(0.05)
            return super().measures(x, exact, seed)

    methods = sys.argv[2].split(",")
    t = sdekit.study(Slow(), methods, [2, 3, 4, 5], samples=20, results=sys.argv[1])
    print(json.dumps(dict(reused=t.reused, rows=len(t))))
''')


def test_two_studies_on_one_results_file_keep_every_row(tmp_path):
    script, path = tmp_path / "study.py", tmp_path / "results.jsonl"
    script.write_text(SLOW_STUDY)
    groups = ["ode:ddim,ode:dpmpp_2m", "ode:unipc,ode:euler"]
    procs = [subprocess.Popen([sys.executable, str(script), str(path), g], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for g in groups]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["rows"] == 8
    lines = path.read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 16                             # both studies' rows, each once
    for g in groups:                                                     # and each study finds all of its own
        again = study(GaussianProblem(), g.split(","), [2, 3, 4, 5], samples=20, results=path)
        assert again.reused == 8


# -- rows changed on disk -----------------------------------------------------------------------------------
def _strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def test_a_row_changed_on_disk_is_run_again(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    p, methods = GaussianProblem(), ["ode:ddim", "ode:dpmpp_2m"]
    first = study(p, methods, [4, 8], samples=40, results=path)
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    assert row["sha256"] == row_checksum(row)
    changed = lines[1].replace(f'"nfe": {row["nfe"]},', f'"nfe": {row["nfe"] + 1},')      # still valid JSON
    assert changed != lines[1]
    path.write_text("\n".join([lines[0], changed] + lines[2:]) + "\n")
    capsys.readouterr()
    again = study(p, methods, [4, 8], samples=40, results=path)
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and f"line 2 of {path} fails its checksum" in warned[0]
    assert again.reused == 3 and _strip(again.rows) == _strip(first.rows)            # re-run, same numbers
    assert [json.loads(t)["key"] for t in path.read_text().splitlines()] == [r["key"] for r in first.rows]
    read_results(path)
    assert _warnings(capsys.readouterr().err) == []                                   # the changed row is gone


def test_non_utf8_keyless_and_incomplete_rows_are_skipped_with_one_line_and_run_again(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    p, methods = GaussianProblem(), ["ode:ddim", "ode:dpmpp_2m"]
    first = study(p, methods, [4, 8], samples=40, results=path)
    lines = path.read_bytes().splitlines()
    lines[0] = lines[0].replace(b'"label": "', b'"label": "\xff', 1)                  # not UTF-8
    incomplete = json.loads(lines[2])
    del incomplete["verdict"], incomplete["sha256"]                                   # a row lacking a field
    lines[2] = json.dumps(incomplete).encode()
    lines.append(b'{"note": "no key"}')                                                # a line with no key
    path.write_bytes(b"\n".join(lines) + b"\n")
    capsys.readouterr()
    again = study(p, methods, [4, 8], samples=40, results=path)
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 3 and all(str(path) in w for w in warned)
    assert "line 1 " in warned[0] and "not UTF-8" in warned[0]
    assert "line 3 " in warned[1] and "lacks verdict" in warned[1]
    assert "line 5 " in warned[2] and 'no "key"' in warned[2]
    assert again.reused == 2 and _strip(again.rows) == _strip(first.rows)
    kept = path.read_bytes().splitlines()
    assert b'{"note": "no key"}' in kept and any(b"\xff" in t for t in kept)         # what it cannot read stays
    assert [json.loads(t)["key"] for t in kept[:4]] == [r["key"] for r in first.rows]


def test_rows_without_checksum_are_read_and_a_torn_last_line_is_silent(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(dict(key="old", v=1)) + "\n" + '{"key": "b", "v"')      # before checksums; a kill
    assert read_results(path) == {"old": dict(key="old", v=1)}
    assert _warnings(capsys.readouterr().err) == []
    append_row(path, dict(key="c", v=2))
    assert set(read_results(path)) == {"old", "c"}


# -- shards changed on disk ----------------------------------------------------------------------------------
def _sample(out, *extra, n=30):
    args = ["sample", "--n", str(n), "--seed", "7", "--out", str(out), "--quiet"] + [str(a) for a in extra]
    assert main(args) == 0
    return torch.load(out, weights_only=True)


def _flip(path, x):
    """Change one bit of the samples inside a shard file, where they are stored as they are (torch.save keeps
    tensors uncompressed): a file that still loads, with one sample a little off."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(x.numpy().tobytes())
    assert at >= 0
    data[at + 8 * 3] ^= 0x01                               # the lowest byte of element 3
    path.write_bytes(bytes(data))


def test_a_changed_kept_shard_is_solved_again(tmp_path, capsys):
    out, args = tmp_path / "s.pt", ("--method", "sde:ddim", "--steps", 4, "--shard-size", 8, "--keep-shards")
    first = _sample(out, *args)
    shard = tmp_path / "s.pt.shards" / "shard-000001.pt"
    _flip(shard, torch.load(shard, weights_only=True)["x"])
    assert not torch.equal(torch.load(shard, weights_only=True)["x"], first["x"][8:16])   # loads, but wrong
    capsys.readouterr()
    again = _sample(out, *args)
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "shard-000001.pt" in line] == [
        f"sdekit: warning: {shard} fails its checksum (the file was changed on disk): solving shard 1 "
        "(samples 8..15) again"]
    assert torch.equal(again["x"], first["x"])
    assert torch.equal(torch.load(shard, weights_only=True)["x"], first["x"][8:16])


def test_shard_checksums_on_load_and_peek(tmp_path, capsys):
    store = ShardStore(tmp_path / "f", dict(a=1))
    store.claim()
    s = Shard(0, 0, 3)
    x = torch.arange(6, dtype=torch.float64).view(3, 2)
    store.save(s, x, nfe=4)
    assert torch.equal(store.load(s)["x"], x) and store.peek(s)
    _flip(tmp_path / "f" / "shard-000000.pt", x)
    capsys.readouterr()
    assert store.load(s) is None                                           # never gathered
    assert "fails its checksum" in capsys.readouterr().err
    assert not store.peek(s) and not os.path.exists(store.path(s.k))      # deleted: solved again
    torch.save(dict(run=store.key, k=0, start=0, stop=3, x=x, nfe=4), store.path(0))   # an older file, no checksum
    assert store.load(s) is None and "no checksum" in capsys.readouterr().err


# -- two sdekit sample runs on one folder --------------------------------------------------------------------
def test_a_second_run_on_a_folder_in_use_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "s.pt"
    holder = ShardStore(str(out) + ".shards", dict(anything=1))
    holder.lock()                                            # another run holds the folder
    args = ["sample", "--n", "16", "--seed", "7", "--steps", "3", "--shard-size", "4", "--out", str(out), "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "another sdekit sample" in err and f"{out}.shards" in err
    assert f"process {os.getpid()}" in err
    assert not [f for f in os.listdir(f"{out}.shards") if f.startswith("shard-")] and not out.exists()
    holder.unlock()
    assert main(args) == 0 and out.exists()


GATED_SCORE = """
import os, time

def score(x, t):
    gate = os.environ.get("SDEKIT_TEST_GATE")          # set for the first run only
    if gate and os.path.exists("s.pt.shards/run.json"):  # it has claimed the folder: hold until the gate opens
        while not os.path.exists(gate):
            time.sleep(0.02)
    return -x
"""


def test_two_identical_sample_runs_at_once_write_each_shard_once(tmp_path, monkeypatch):
    (tmp_path / "gatedscore.py").write_text(GATED_SCORE)
    monkeypatch.chdir(tmp_path)
    gate = tmp_path / "gate"
    args = [sys.executable, "-m", "sdekit", "sample", "--score", "gatedscore:score", "--method", "sde:euler",
            "--steps", "3", "--n", "16", "--seed", "7", "--shard-size", "4", "--out", "s.pt"]
    first = subprocess.Popen(args, cwd=tmp_path, env=_env(SDEKIT_TEST_GATE=str(gate)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not (tmp_path / "s.pt.shards" / "run.json").exists():      # the first run holds the folder
            assert first.poll() is None, "the first run ended before it claimed the folder"
            assert time.monotonic() < end, "the first run never claimed the folder"
            time.sleep(0.02)
        second = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.splitlines() == [
            f"sdekit: error: another sdekit sample (process {first.pid}) is writing s.pt.shards now (the same "
            "--out); wait for it to finish or stop it, or give another --out"]
        assert "shard " not in second.stdout
    finally:
        gate.write_text("open")
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert sorted(line.split(":")[0] for line in out.splitlines() if line.startswith("shard ")) == [
        f"shard {k}" for k in range(4)]                                   # each shard solved and written once
    one = _sample(tmp_path / "one.pt", "--score", "gatedscore:score", "--method", "sde:euler", "--steps", 3,
                  "--shard-size", 4, n=16)
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["x"], one["x"])


# -- torchrun variables set in part -----------------------------------------------------------------------
@pytest.mark.parametrize("env, missing", [
    (dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0"), "MASTER_ADDR and MASTER_PORT are not"),
    (dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_PORT="29500"), "MASTER_ADDR is not"),
    (dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="localhost"), "MASTER_PORT is not"),
    (dict(WORLD_SIZE="2", MASTER_ADDR="localhost", MASTER_PORT="29500"), "RANK is not"),
])
def test_torchrun_variables_set_in_part_name_the_missing_one(env, missing):
    with pytest.raises(InvalidParameterError, match=missing) as info:
        dist_context("cpu", environ=env)
    assert "\n" not in str(info.value) and "torchrun" in str(info.value)
    with pytest.raises(InvalidParameterError, match="not in 0..1"):
        dist_context("cpu", environ=dict(WORLD_SIZE="2", RANK="2", MASTER_ADDR="h", MASTER_PORT="1"))
    with pytest.raises(InvalidParameterError, match="not a port"):
        dist_context("cpu", environ=dict(WORLD_SIZE="2", RANK="0", MASTER_ADDR="h", MASTER_PORT="http"))


def test_sample_under_torchrun_variables_without_master_addr_is_one_line(tmp_path, monkeypatch, capsys):
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["sample", "--n", "4", "--steps", "2", "--out", str(tmp_path / "s.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "MASTER_ADDR and MASTER_PORT are not" in err
