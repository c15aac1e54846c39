"""Updating the lists from the API: ``POST /lists/update`` starts ``filterproxy lists update`` (the same
command, as a child process: downloads and the snapshot compile stay off the serving process, house rules 4
and 9) and then the running process's reload (``Runner.reload``, as SIGHUP); ``GET /lists/update`` tells
how it goes. One update at a time (a second POST while one runs answers 409).

Each source's last failure (its ``update failed`` line) is kept with the job and shown by ``GET /status``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from filterproxy.admin.errors import ApiError
from filterproxy.admin.routes import Call, Context, Endpoint, iso

log = logging.getLogger("filterproxy.admin")

JOB = "lists.update"
MAX_LINES = 200  # output lines kept for GET /lists/update
_FAILED = re.compile(r"^(?P<id>[^\s:]+): (?:update|download) failed, (?P<why>.*)$")


@dataclass
class UpdateJob:
    """One run of ``filterproxy lists update`` and the reload after it."""

    by: str
    state: str = "running"  # running | reloading | done | failed
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished_at: dt.datetime | None = None
    exit_code: int | None = None
    reloaded: bool | None = None
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=MAX_LINES))
    errors: dict[str, str] = field(default_factory=dict)  # list id -> why its download failed
    task: asyncio.Task[None] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "by": self.by,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "exit_code": self.exit_code,
            "reloaded": self.reloaded,
            "errors": dict(self.errors),
            "output": list(self.output),
        }


def last_errors(ctx: Context) -> dict[str, str]:
    """Each list's failure in the last update run from the API ({} when none ran)."""
    job = ctx.jobs.get(JOB)
    return dict(job.errors) if isinstance(job, UpdateJob) else {}


def _command(ctx: Context) -> list[str]:
    cfg = ctx.engine.config
    cmd = [sys.executable, "-m", "filterproxy", "lists", "update"]
    if cfg.path:
        cmd += ["--config", cfg.path]
    return cmd + ["--state-dir", cfg.server.state_dir]


async def _run(ctx: Context, job: UpdateJob) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *_command(ctx),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            job.output.append(line)
            m = _FAILED.match(line)
            if m:
                job.errors[m.group("id")] = m.group("why")
        job.exit_code = await proc.wait()
        job.state = "reloading"
        reload = getattr(ctx.served, "reload", None)
        job.reloaded = bool(await reload()) if reload is not None else None
        job.state = "done" if job.exit_code == 0 and job.reloaded is not False else "failed"
    except Exception as exc:  # reported in the job; the lists being served stay as they are
        log.exception("admin: lists update failed")
        job.output.append(f"error: {exc}")
        job.state = "failed"
    finally:
        job.finished_at = dt.datetime.now(dt.UTC)
        log.info("admin: lists update by %s: %s (exit %s)", job.by, job.state, job.exit_code)


async def start_update(call: Call) -> dict[str, Any]:
    job = call.ctx.jobs.get(JOB)
    if isinstance(job, UpdateJob) and job.finished_at is None:
        raise ApiError(409, f"a lists update is already running (since {iso(job.started_at)})")
    job = UpdateJob(by=call.actor.name)
    call.ctx.jobs[JOB] = job
    job.task = asyncio.get_running_loop().create_task(_run(call.ctx, job), name="filterproxy-admin-lists-update")
    return job.as_json()


async def update_progress(call: Call) -> dict[str, Any]:
    job = call.ctx.jobs.get(JOB)
    if not isinstance(job, UpdateJob):
        return {"state": "idle"}
    return job.as_json()


ENDPOINTS = [
    Endpoint(
        "POST", "/lists/update", start_update, "Update the lists now (in the background)", "admin", {}, status=202
    ),
    Endpoint("GET", "/lists/update", update_progress, "The progress of the last lists update", "admin"),
]
