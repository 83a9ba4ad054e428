"""Pipeline runs through papermill: recorded, locked, queued through Redis to workers."""
import json

import nbformat as nbf
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tradelab.core import TradelabError
from tradelab.db import PipelineRun
from tradelab.pipelines import FileLock, RedisLock, enqueue, held, run_pipeline, work


def _pipeline(root, name, body):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbf.v4.new_code_cell("# parameters\nx = 1\nrun_id = None")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbf.v4.new_code_cell(body)]
    root.mkdir(parents=True, exist_ok=True)
    nbf.write(nb, root / f"{name}.ipynb")


@pytest.fixture
def pipes(tmp_path, data_dir):
    root = tmp_path / "pipelines"
    _pipeline(root, "double", "result = x * 2\nprint('result', result)")
    _pipeline(root, "boom", "raise ValueError(f'bad x={x}')")
    return root


def test_a_run_is_recorded_with_its_parameters_and_output_notebook(sqlite_engine, pipes):
    run = run_pipeline(sqlite_engine, "double", {"x": 21}, root=pipes)
    assert run.status == "ok" and run.error is None and run.duration_ms > 0
    out = nbf.read(run.output_path, as_version=4)
    outputs = [o for c in out.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("result 42" in o.get("text", "") for o in outputs)
    with Session(sqlite_engine) as s:
        stored = s.get(PipelineRun, run.id)
    assert stored.parameters == {"x": 21} and stored.finished_at >= stored.started_at


def test_a_failing_run_is_recorded_with_the_error(sqlite_engine, pipes):
    run = run_pipeline(sqlite_engine, "boom", {"x": 5}, root=pipes)
    assert run.status == "failed" and "ValueError" in run.error and "bad x=5" in run.error


def test_a_failing_run_is_logged_as_an_error_with_its_run_id(sqlite_engine, pipes, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="tradelab.pipelines")
    run = run_pipeline(sqlite_engine, "boom", {"x": 5}, root=pipes)
    logged = [(r.levelname, r.run_id) for r in caplog.records if r.name == "tradelab.pipelines"]
    assert logged == [("INFO", run.id), ("ERROR", run.id)] and "bad x=5" in caplog.records[-1].getMessage()


def test_secret_parameters_are_refused_before_anything_is_recorded(sqlite_engine, pipes):
    with pytest.raises(TradelabError, match="secrets are never passed"):
        run_pipeline(sqlite_engine, "double", {"openai_api_key": "sk-abc"}, root=pipes)
    with Session(sqlite_engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(PipelineRun)) == 0


def test_an_unknown_pipeline_names_the_available_ones(sqlite_engine, pipes):
    with pytest.raises(TradelabError, match="available: boom, double"):
        run_pipeline(sqlite_engine, "nope", root=pipes)


def test_a_pipeline_already_running_is_not_started_twice(sqlite_engine, pipes, data_dir):
    with held(FileLock("pipeline-double"), "x"):
        with pytest.raises(TradelabError, match="already running"):
            run_pipeline(sqlite_engine, "double", root=pipes)


def test_a_redis_lock_is_shared_between_machines_and_released_only_by_its_owner(redis_url):
    a, b = RedisLock("cycle", redis_url), RedisLock("cycle", redis_url)
    assert a.acquire() and not b.acquire()
    b.release()  # not the owner: nothing happens
    assert not b.acquire() and a.holder() == a.token
    a.release()
    assert b.acquire()
    b.release()


def test_queued_runs_are_taken_by_a_worker_and_recorded(engine, pipes, redis_url):
    ids = [enqueue(redis_url, "double", {"x": i}) for i in (1, 2)]
    runs = work(engine, redis_url, once=True, wait_s=1, root=pipes)
    assert len(ids) == 2 and [r.status for r in runs] == ["ok", "ok"]
    with Session(engine) as s:
        stored = s.scalars(sa.select(PipelineRun).order_by(PipelineRun.id)).all()
    assert [json.dumps(r.parameters) for r in stored] == ['{"x": 1}', '{"x": 2}']
    assert all(r.host and r.status == "ok" for r in stored)
