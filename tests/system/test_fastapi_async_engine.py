"""An ASGI service that creates an AsyncEngine per request (FastAPI + uvicorn + aiomysql).

Run as a user runs it -- `trace-quit -- python -m uvicorn app:app` from the service's own
directory -- driven over HTTP, and stopped the way a supervisor stops it: SIGINT to its
process group, without a terminal. The first screen of the report must name the handler's
create_async_engine() line and give the asyncio fix; the connections aiomysql's __del__ left
to the collector are gc (the collection that destroyed them), not the later transport close.
"""

import os
import socket
import signal
import subprocess
import time
import urllib.request

import pytest

from tq_support import REPO, TRACE_QUIT, load_events, venv_python_for
from trace_quit.tracer.dsn import sqlalchemy_url

pytestmark = [pytest.mark.bpf, pytest.mark.server]

APP = '''import os

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

URL = os.environ["APP_DB_URL"]
app = FastAPI()


@app.get("/items")
async def items():
    engine = create_async_engine(URL)
    async with engine.connect() as conn:
        value = (await conn.execute(text("SELECT 1"))).scalar()
    return {"value": value}
'''
ENGINE_LINE = 13
REQUESTS = 120


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_engine_per_request_fastapi_first_screen(bpf_server, tmp_path):
    try:  # the venv scripts/setup.sh gave the ASGI stack (3.12, else the nearest CPython present)
        with open(os.path.join(REPO, ".venvs", "asgi-version")) as f:
            version = f.read().strip()
    except OSError:
        version = ""
    py = venv_python_for(version) if version else ""
    if not py or subprocess.run([py, "-c", "import fastapi, uvicorn, aiomysql"], capture_output=True).returncode:
        pytest.skip("no fastapi/uvicorn/aiomysql in .venvs/py%s (scripts/setup.sh installs them)" % version)
    project = tmp_path / "service"
    project.mkdir()
    (project / "app.py").write_text(APP)
    assert APP.splitlines()[ENGINE_LINE - 1].strip().startswith("engine = create_async_engine")
    port = _free_port()
    env = dict(os.environ, APP_DB_URL=sqlalchemy_url(bpf_server.dsn_tcp).replace("+mysqldb", "+aiomysql", 1))
    tracer = subprocess.Popen(TRACE_QUIT + ["-o", "service.tqcap", "--", py, "-m", "uvicorn", "app:app",
                                            "--port", str(port), "--log-level", "warning"],
                              cwd=str(project), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        url = "http://127.0.0.1:%d/items" % port
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline and tracer.poll() is None, "the service never answered"
                time.sleep(0.2)
        for _ in range(REQUESTS - 1):
            assert urllib.request.urlopen(url, timeout=10).read() == b'{"value":1}'
        os.killpg(tracer.pid, signal.SIGINT)   # a supervisor's stop: the whole group, no terminal
        out, err = tracer.communicate(timeout=120)
    finally:
        if tracer.poll() is None:
            os.killpg(tracer.pid, signal.SIGKILL)
            tracer.wait()
    text = err.decode()
    assert tracer.returncode == 0, text
    # aiomysql's own "Event loop is closed" from __del__ at shutdown reads as it does untraced.
    assert "tracer/agent/" not in text, text
    # uvicorn saw one SIGINT and shut down in order (a second would force its exit).
    signals = load_events(str(project / "service.tqcap")).trailer["signals"]
    assert [s["forwarded"] for s in signals] == [False]
    first_screen = "\n".join(text[text.index("SUMMARY"):].splitlines()[:24])
    assert "create_async_engine() ran %d times at app.py:%d in items" % (REQUESTS, ENGINE_LINE) in first_screen, text
    assert "Create the AsyncEngine once" in first_screen, first_screen
    assert "PyMySQL" not in first_screen and "mysql_close" not in first_screen, first_screen
