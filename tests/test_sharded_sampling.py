"""Sharded sampling: sample i from (seed, i) alone; the same file for any batch, shard size, number of
processes (torchrun, gloo) and after a kill and a resume; mismatched shards refused."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sdekit import InvalidParameterError, MethodArgumentError, SDEKitError, StudyProblem, VESDE, VPSDE
from sdekit._sharding import ShardStore, Shard, dist_context, keyed_initial, shards
from sdekit.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")

# A Gaussian score N(0, I) under VP (p_t = N(0, I) for every t: the score is -x) that sleeps
# SDEKIT_TEST_SLEEP seconds a call, so a run under torchrun can be killed between two shards.
SLOW_SCORE = """
import os, time

def score(x, t):
    time.sleep(float(os.environ.get("SDEKIT_TEST_SLEEP", "0")))
    return -x
"""


def _sample(out, *extra, n=30):
    args = ["sample", "--n", str(n), "--seed", "7", "--out", str(out), "--quiet"] + [str(a) for a in extra]
    assert main(args) == 0
    return torch.load(out, weights_only=True)


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


# -- keyed initial states --------------------------------------------------------------------------------
def test_keyed_initial_rows_depend_on_their_index_only():
    problem = StudyProblem(VPSDE(), lambda x, t: -x, event_shape=(3, 4))
    index = torch.arange(100, 137)
    full = keyed_initial(problem, 11, index)
    assert full.shape == (37, 3, 4) and full.dtype == torch.float64
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keyed_initial(problem, 11, index[perm]), full[perm])            # any order, any subset
    assert torch.equal(keyed_initial(problem, 11, index[5:6]), full[5:6])
    assert not torch.equal(keyed_initial(problem, 12, index), full)                    # the seed keys it


def test_keyed_prior_has_the_priors_moments():
    sde = VESDE()                                      # prior N(0, sigma_max^2 I), sigma_max = 50
    problem = StudyProblem(sde, lambda x, t: -x, event_shape=(2,))
    n = 20000
    z = keyed_initial(problem, 0, torch.arange(n)).reshape(-1)
    m = z.numel()
    assert abs(float(z.mean())) < 4 * sde.prior_std / math.sqrt(m)
    var_se = sde.prior_std ** 2 * math.sqrt(2 / m)    # standard error of a Gaussian sample variance
    assert abs(float(z.var()) - sde.prior_std ** 2) < 4 * var_se


def test_problems_own_initial_keyed_one_generator_a_sample():
    # a forward problem has no prior: its own initial(n, generator) is called once a sample
    problem = StudyProblem(VPSDE(), process="forward", initial=lambda n, g: torch.rand(n, 2, generator=g))
    full = keyed_initial(problem, 3, torch.arange(12))
    assert torch.equal(keyed_initial(problem, 3, torch.arange(4, 9)), full[4:9])
    assert len({tuple(r.tolist()) for r in full}) == 12                                # distinct per sample


def test_keyed_initial_hook_of_the_problem_is_used():
    class Hooked(StudyProblem):
        def keyed_initial(self, seed, index):
            return index.to(torch.float64)[:, None].expand(-1, 2) + seed
    problem = Hooked(VPSDE(), lambda x, t: -x)
    assert torch.equal(keyed_initial(problem, 1, torch.tensor([4, 2])), torch.tensor([[5.0, 5.0], [3.0, 3.0]],
                                                                                      dtype=torch.float64))


# -- one process: batch and shard size change nothing ----------------------------------------------------
@pytest.mark.parametrize("method", ["sde:euler", "sde:euler_ancestral", "sde:dpmpp_2m_sde", "sde:pc",
                                    "ode:dpmpp_2m", "ode:torchdiffeq.rk4"])
def test_samples_do_not_depend_on_batch_or_shard_size(method, tmp_path):
    a = _sample(tmp_path / "a.pt", "--method", method, "--steps", 5, "--shard-size", 30)
    b = _sample(tmp_path / "b.pt", "--method", method, "--steps", 5, "--shard-size", 8, "--batch", 3)
    assert a["x"].shape == (30, 2) and torch.isfinite(a["x"]).all()
    assert torch.equal(a["x"], b["x"])
    assert a["nfe"] == b["nfe"] and not os.path.exists(tmp_path / "a.pt.shards")       # shards removed


def test_npz_holds_the_same_samples(tmp_path):
    a = _sample(tmp_path / "a.pt", "--method", "sde:ddim", "--steps", 4, "--shard-size", 7)
    assert main(["sample", "--n", "30", "--seed", "7", "--method", "sde:ddim", "--steps", "4", "--shard-size", "7",
                 "--out", str(tmp_path / "b.npz"), "-q"]) == 0
    b = np.load(tmp_path / "b.npz")
    assert np.array_equal(b["x"], a["x"].numpy()) and int(b["n"]) == 30 and str(b["method"]) == a["method"]


def test_batch_coupled_adaptive_methods_are_refused_unless_alone(tmp_path, capsys):
    args = ["sample", "--n", "6", "--method", "ode:torchdiffeq.dopri5", "--tol", "1e-4", "-q"]
    assert main(args + ["--out", str(tmp_path / "a.pt")]) == 2
    err = capsys.readouterr().err
    assert "one step size for the whole batch" in err and "--batch 1" in err and len(err.splitlines()) == 1
    alone = _sample(tmp_path / "b.pt", "--method", "ode:torchdiffeq.dopri5", "--tol", "1e-4", "--batch", 1, n=6)
    alone_2 = _sample(tmp_path / "c.pt", "--method", "ode:torchdiffeq.dopri5", "--tol", "1e-4", "--batch", 1,
                      "--shard-size", 2, n=6)
    assert torch.equal(alone["x"], alone_2["x"])


@pytest.mark.parametrize("method, sde", [("ode:sdekit.dopri5", "vp"), ("ode:dpm_adaptive", "vp"),
                                         ("ode:dpm_adaptive", "ve")])
def test_per_sample_adaptive_methods_give_the_same_samples_in_any_batch(method, sde, tmp_path):
    # sdekit's adaptive loop keeps a step size per sample (per_sample=True): no batch coupling to refuse
    a = _sample(tmp_path / "a.pt", "--sde", sde, "--method", method, "--tol", "1e-4", "--shard-size", 16, n=16)
    b = _sample(tmp_path / "b.pt", "--sde", sde, "--method", method, "--tol", "1e-4", "--shard-size", 16,
                "--batch", 5, n=16)
    assert torch.equal(a["x"], b["x"]) and torch.isfinite(a["x"]).all()


def test_settings_that_differ_are_refused_and_damaged_shards_solved_again(tmp_path, capsys):
    out = tmp_path / "s.pt"
    first = _sample(out, "--method", "sde:ddim", "--steps", 4, "--shard-size", 8, "--keep-shards")
    folder = tmp_path / "s.pt.shards"
    assert sorted(os.listdir(folder)) == ["run.json"] + [f"shard-{k:06d}.pt" for k in range(4)]
    rc = main(["sample", "--n", "30", "--seed", "7", "--method", "sde:ddim", "--steps", "5", "--shard-size", "8",
               "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds shards of another run (different budget)" in err and "delete" in err
    (folder / "shard-000002.pt").write_bytes(b"torn")                                   # a damaged shard
    again = _sample(out, "--method", "sde:ddim", "--steps", 4, "--shard-size", 8, "--keep-shards")
    assert torch.equal(again["x"], first["x"])


def test_a_shard_file_of_another_run_is_refused(tmp_path):
    store = ShardStore(tmp_path / "f", dict(a=1))
    store.claim()
    other = ShardStore(tmp_path / "f", dict(a=2))
    other.save(Shard(0, 0, 3), torch.zeros(3, 2))
    with pytest.raises(InvalidParameterError, match="another run"):
        store.load(Shard(0, 0, 3))
    with pytest.raises(InvalidParameterError, match="different a"):
        other.check()


def test_shards_cover_the_indices_once():
    cut = shards(23, 5)
    assert [(s.start, s.stop) for s in cut] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert torch.equal(torch.cat([s.indices() for s in cut]), torch.arange(23))


def test_without_torchrun_one_process(monkeypatch):
    ctx = dist_context("cpu", environ={})
    assert (ctx.rank, ctx.world, ctx.group) == (0, 1, False)
    with pytest.raises(SDEKitError, match="torchrun"):
        dist_context("cpu", environ=dict(WORLD_SIZE="two", RANK="0"))


@pytest.mark.parametrize("bad, text", [(["--n", "0"], "-n must be from 1"), (["--seed", str(2 ** 64)], "2**64"),
                                       (["--batch", "0"], "at least 1"), (["--steps", "0"], "--steps must be from 1")])
def test_bad_options_one_line(bad, text, tmp_path, capsys):
    args = ["sample", "--steps", "4", "--out", str(tmp_path / "x.pt")] + bad
    assert main(args) == 2
    err = capsys.readouterr().err
    assert text in err and len(err.splitlines()) == 1


def test_method_error_class():
    from sdekit._methods import lookup
    from sdekit._sharding import batch_coupling
    with pytest.raises(MethodArgumentError):
        batch_coupling(lookup("scipy.RK45", "ode"), True, 4)
    assert batch_coupling(lookup("scipy.RK45", "ode"), True, 1) == {}
    assert batch_coupling(lookup("sdekit.ddim", "sde"), False, 64) == {}


# -- torchrun, gloo, two processes --------------------------------------------------------------------------
def _torchrun(args, separator=()):
    return ([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "sdekit", *separator, "sample"]
            + [str(a) for a in args])


def test_torchrun_two_processes_equal_one(tmp_path):
    # the spelling, --n: after "--", which keeps torchrun's parser from reading it as its own --nnodes
    args = ["--n", "30", "--seed", "7", "--method", "sde:dpmpp_2m_sde", "--steps", "5", "--shard-size", "4"]
    run = subprocess.run(_torchrun(args + ["--batch", "3", "--out", "two.pt"], separator=("--",)), cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[rank 1/2]" in run.stdout and "[rank 0/2] 30 samples" in run.stdout
    one = _sample(tmp_path / "one.pt", "--method", "sde:dpmpp_2m_sde", "--steps", 5, "--shard-size", 4)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert torch.equal(two["x"], one["x"]) and two["run"] == one["run"]


def test_killed_torchrun_resumes_bit_for_bit(tmp_path, monkeypatch):
    (tmp_path / "slowscore.py").write_text(SLOW_SCORE)
    monkeypatch.chdir(tmp_path)
    args = ["--score", "slowscore:score", "--method", "sde:euler", "--steps", "4", "--shard-size", "4"]
    proc = subprocess.Popen(_torchrun(["--samples", "32", "--seed", "7", "--out", "k.pt", "--keep-shards"] + args),
                            cwd=tmp_path, env=_env(SDEKIT_TEST_SLEEP="0.1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    folder = tmp_path / "k.pt.shards"
    try:
        end = time.monotonic() + 180
        while not (folder.exists() and any(f.endswith(".pt") for f in os.listdir(folder))):
            assert proc.poll() is None and time.monotonic() < end, "torchrun ended before its first shard"
            time.sleep(0.02)
    finally:
        workers = _children(proc.pid)                # torchrun starts each worker in a session of its own,
        os.killpg(proc.pid, signal.SIGKILL)          # so the whole run is torchrun's group and each worker
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    _wait_unlocked(folder)                           # the killed workers' last threads have exited
    kept = {f: (folder / f).read_bytes() for f in os.listdir(folder) if f.startswith("shard-") and f.endswith(".pt")}
    assert 1 <= len(kept) < 8                        # killed between shards: some done, not all
    resumed = _sample("k.pt", *args, "--keep-shards", n=32)
    for name, data in kept.items():                  # no finished shard lost or solved again
        assert (folder / name).read_bytes() == data
    fresh = _sample(tmp_path / "fresh.pt", *args, n=32)
    assert torch.equal(resumed["x"], fresh["x"]) and resumed["x"].shape == (32, 2)


def _children(pid):
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    out = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(name))
    return out


def _wait_unlocked(folder, timeout=30.0):
    """Until no process holds the run's lock on ``folder`` (a killed process releases it as its last thread
    exits)."""
    import fcntl
    end = time.monotonic() + timeout
    fd = os.open(folder, os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < end, f"{folder} is still locked: a worker of the killed run lives on"
                time.sleep(0.02)
    finally:
        os.close(fd)
