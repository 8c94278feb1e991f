"""`clickmask sync`: every annotation of a Label Studio project into the database, through label-studio-sdk.

For projects started before the backend was connected, and for webhooks that were missed. Each annotation goes
through the same parsing and applying as an ANNOTATION_UPDATED webhook (events.py), so both paths store
the same thing and share the rules: an annotation is written only if Label Studio's `updated_at` is newer than the
stored one (running sync twice changes nothing; an annotation edited in Label Studio is replaced), and a deleted
annotation stays deleted.

Deletions: after a complete pass, annotations of the project that are stored but no longer exist in Label Studio
are marked deleted, as ANNOTATIONS_DELETED would have done (the database mirrors Label Studio). Label Studio lists
only the token owner's annotations to an annotator, so sync needs an owner's or administrator's token; with
keep_missing, nothing is marked deleted. A pass that fails part way marks nothing deleted.

Tasks are read page by page; memory holds one page plus the ids of the annotations seen.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from integrations.label_studio.webhooks import (
    DELETED,
    MAX_DELETED_IDS,
    UPDATED,
    Rejected,
    parse_annotation,
    parse_project,
)

from .db import Annotation, Project
from .events import apply_annotation, apply_deletions, get_project, run_in_transaction

PAGE_SIZE = 100
MAX_MESSAGES = 20


class SyncError(RuntimeError):
    """Sync cannot run (Label Studio unreachable, refused, no such project); the message carries no credential."""


@dataclass
class SyncReport:
    tasks: int = 0
    outcomes: Counter = field(default_factory=Counter)  # applied / ignored / rejected -> annotations
    deleted: int = 0
    deletions_skipped: bool = False
    messages: int = 0


def make_client(url: str | None, api_key: str | None, timeout_s: float = 60.0):
    if not url or not api_key:
        raise SyncError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (an owner's or administrator's "
                        "personal access token)")
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=timeout_s)


def sync_project(session_factory: sessionmaker[Session], client, ls_project_id: int, *, keep_missing: bool = False,
                 page_size: int = PAGE_SIZE, progress: bool = True,
                 say: Callable[[str], None] | None = None) -> SyncReport:
    say = say or (lambda text: tqdm.write(text, file=sys.stderr))
    report = SyncReport()
    project_body = fetch_project(client, ls_project_id)
    project = parse_project({"project": project_body})
    # The project row and its label config are refreshed even when no annotation changed: export reads the
    # categories from it.
    run_in_transaction(session_factory, partial(store_project, project_in=project), UPDATED)
    seen: set[int] = set()
    with label_studio_errors(f"listing the tasks of project {ls_project_id}"):
        total = count_tasks(client, ls_project_id)
        with tqdm(total=total, unit="task", desc="sync", disable=not progress, file=sys.stderr) as bar:
            for task in tasks(client, ls_project_id, page_size):
                for annotation in task.pop("annotations", None) or []:
                    if isinstance(annotation, dict) and isinstance(annotation.get("id"), int):
                        seen.add(annotation["id"])
                    apply_one(session_factory, project, project_body, task, annotation, report, say)
                report.tasks += 1
                bar.update(1)
        # Page numbers shift when tasks are added or removed during the pass, so a task may have been missed:
        # then nothing is marked deleted on the strength of this pass.
        complete = report.tasks == total == count_tasks(client, ls_project_id)
    if keep_missing:
        return report
    if not complete:
        report.deletions_skipped = True
        say(f"the project changed during sync ({report.tasks} tasks read, {total} listed): nothing marked "
            f"deleted; run sync again")
        return report
    report.deleted = mark_missing_deleted(session_factory, project, seen)
    return report


def count_tasks(client, ls_project_id: int) -> int:
    page = client.tasks.list(project=ls_project_id, page=1, page_size=1)
    return int(page.response.total)


def tasks(client, ls_project_id: int, page_size: int):
    """Every task with its annotations, as the plain JSON the API sent, one page in memory at a time.

    The SDK's own pager asks for the page after the last one, which Label Studio answers with 404 "Invalid
    page": pages are walked here instead, until a short page or that 404.
    """
    from label_studio_sdk.core.api_error import ApiError

    number = 1
    while True:
        try:
            page = client.tasks.list(project=ls_project_id, fields="all", page=number, page_size=page_size)
        except ApiError as exc:
            if exc.status_code == 404 and number > 1:
                return
            raise
        items = page.items or []
        for item in items:
            yield item.model_dump(mode="json", by_alias=True)
        if len(items) < page_size:
            return
        number += 1


@contextmanager
def label_studio_errors(what: str):
    """SDK and HTTP errors as SyncError with a plain message (no body, no header: they may echo a token)."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as exc:
        raise SyncError(f"{what}: Label Studio answered HTTP {exc.status_code}{hint(exc.status_code)}") from None
    except httpx.HTTPError as exc:
        raise SyncError(f"{what}: Label Studio cannot be reached ({type(exc).__name__})") from None


def hint(status: int | None) -> str:
    if status == 401:
        return " (check LABEL_STUDIO_API_KEY: a personal access token)"
    if status == 403:
        return " (the token's user may not read this project)"
    if status == 404:
        return " (no such project)"
    return ""


def fetch_project(client, ls_project_id: int) -> dict:
    with label_studio_errors(f"reading project {ls_project_id}"):
        project = client.projects.get(id=ls_project_id)
    body = project.model_dump(mode="json", by_alias=True)
    return {key: body.get(key) for key in ("id", "title", "label_config", "parsed_label_config")}


def store_project(session: Session, project_in) -> tuple[str, str]:
    get_project(session, project_in)
    return "applied", f"project {project_in.ls_id} stored"


def apply_one(session_factory, project, project_body: dict, task: dict, annotation, report: SyncReport, say) -> None:
    # The body an ANNOTATION_UPDATED webhook would carry for this annotation.
    body = {"action": UPDATED, "project": project_body, "annotation": annotation, "task": task}
    try:
        if not isinstance(annotation, dict):
            raise Rejected("an annotation is not a JSON object")
        parsed = parse_annotation(body)
        outcome = run_in_transaction(session_factory, partial(apply_annotation, project_in=project, parsed=parsed),
                                     UPDATED)
        status, reason = outcome.status, outcome.reason
    except Rejected as exc:
        status, reason = "rejected", str(exc)
    report.outcomes[status] += 1
    if status == "rejected":
        report.messages += 1
        ident = annotation.get("id") if isinstance(annotation, dict) else "?"
        if report.messages <= MAX_MESSAGES:
            say(f"annotation {ident} of task {task.get('id')} not stored: {reason}")
        elif report.messages == MAX_MESSAGES + 1:
            say("(further messages not shown; the counts follow at the end)")


def mark_missing_deleted(session_factory, project, seen: set[int]) -> int:
    with session_factory() as session:
        stored = session.scalars(
            select(Annotation.ls_annotation_id)
            .join(Project, Annotation.project_id == Project.id)
            .where(Project.ls_project_id == project.ls_id, Annotation.deleted_at.is_(None))
        ).all()
    missing = sorted(set(stored) - seen)
    for start in range(0, len(missing), MAX_DELETED_IDS):
        chunk = missing[start:start + MAX_DELETED_IDS]
        run_in_transaction(session_factory, partial(apply_deletions, project_in=project, ids=chunk), DELETED)
    return len(missing)
