"""Studies on Dask: rows on a LocalCluster give the serial run's results file, row for row; executor choices."""

import json

import pytest
import torch

from sdekit import InvalidParameterError, study
from sdekit._study_engine._executors import DaskExecutor, ProcessExecutor, SerialExecutor, make_executor
from sdekit._study_engine._results import write_in_order
from sdekit.cli import main
from sdekit.studies import GaussianProblem

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.usefixtures("single_thread")

METHODS = ["sde:euler", "sde:dpmpp_2m_sde", "ode:unipc", "ode:dopri5"]
REF = dict(steps=32)                                   # a coarse reference: these tests are about equality


def _rows(path):
    """The results file's rows in file order, without the wall time (the one number a clock sets)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "sha256")} for r in rows]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as c:
        yield c


def test_dask_rows_equal_serial_rows(tmp_path, cluster):
    p = GaussianProblem()
    serial = study(p, METHODS, "steps=4,8;tol=1e-3", samples=60, seeds=[0, 1], reference=REF,
                   results=tmp_path / "serial.jsonl")
    with distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as tasks:
            dask = study(p, METHODS, "steps=4,8;tol=1e-3", samples=60, seeds=[0, 1], reference=REF,
                         results=tmp_path / "dask.jsonl", executor=client)
        keys = [str(t["key"]) for t in tasks.data]
        assert sum("run_job" in k for k in keys) == 14                          # the rows ran on the cluster,
        assert sum("context_job" in k for k in keys) == 2                       # and each seed's references
        assert client.status == "running"                 # a client handed in is left open
    assert len(_rows(tmp_path / "serial.jsonl")) == 14
    assert _rows(tmp_path / "dask.jsonl") == _rows(tmp_path / "serial.jsonl")
    for label, x in serial.samples.items():
        assert torch.equal(dask.samples[label], x)
    assert [r["key"] for r in dask.rows] == [r["key"] for r in serial.rows]


def test_sdekit_study_executor_dask_scheduler(tmp_path, cluster):
    args = ["study", "--problem", "gaussian", "--methods", "sde:ddim,ode:dpmpp_2m", "--budgets", "4,8",
            "--samples", "50", "--seeds", "2", "--reference-steps", "32", "--no-plots", "-q"]
    assert main(args + ["--out", str(tmp_path / "s"), "--executor", "serial"]) == 0
    assert main(args + ["--out", str(tmp_path / "d"), "--executor", "dask", "--scheduler",
                        cluster.scheduler_address]) == 0
    assert _rows(tmp_path / "d" / "results.jsonl") == _rows(tmp_path / "s" / "results.jsonl")
    assert main(args + ["--out", str(tmp_path / "d"), "--executor", "dask", "--scheduler",
                        cluster.scheduler_address]) == 0  # all rows there: nothing sent to the cluster
    assert _rows(tmp_path / "d" / "results.jsonl") == _rows(tmp_path / "s" / "results.jsonl")


def test_results_file_ends_in_plan_order(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [dict(key="c", v=3), dict(key="old", v=0), dict(key="a", v=1), dict(key="c", v=4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"key": "b", "v"')   # a torn last line
    write_in_order(path, ["a", "b", "c"])
    assert [json.loads(line) for line in path.read_text().splitlines()] == \
        [dict(key="a", v=1), dict(key="c", v=4), dict(key="old", v=0)]


def test_executor_choices():
    assert isinstance(make_executor(), SerialExecutor)
    assert isinstance(make_executor(workers=3), ProcessExecutor) and make_executor(workers=3).workers == 3
    assert isinstance(make_executor("processes"), ProcessExecutor)
    assert isinstance(make_executor("dask", scheduler="tcp://127.0.0.1:8786"), DaskExecutor)
    for kwargs, text in [(dict(executor="threads"), "one of serial, processes, dask"),
                         (dict(executor="serial", scheduler="tcp://h:1"), "for executor='dask'"),
                         (dict(executor="dask", workers=2), "takes none"),
                         (dict(workers=0), "positive integer"),
                         (dict(executor="dask", scheduler=3), "address")]:
        with pytest.raises((InvalidParameterError, TypeError), match=text):
            make_executor(**kwargs)


def test_cli_executor_errors_are_one_line(tmp_path, capsys):
    assert main(["study", "--executor", "serial", "--scheduler", "tcp://h:1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "for executor='dask'" in err and len(err.splitlines()) == 1
