"""`clickmask export --format coco`: a project's submitted masks from the database into one COCO JSON file.

What is exported: every mask of every annotation of the project that is neither deleted nor cancelled (with
latest_only, only the latest such annotation of each task: newest Label Studio `updated_at`, then highest id).
Images are those the exported annotations point to; categories are the labels of the BrushLabels and PolygonLabels
controls in config order (ids from 1). A brush region's segmentation is the stored COCO RLE written as is, so holes
and separate parts stay exactly as drawn; with polygons, the outer pixel edges of each part (holes filled: COCO
polygons cannot cut them). A polygon region's segmentation is always its polygon, vertex for vertex as Label
Studio's own COCO export writes it (pixels: x% / 100 * width). Area and box come from the mask in every case.

Memory stays flat: rows are read in chunks (yield_per: a server-side cursor on PostgreSQL) and the JSON is written
item by item to a temporary file that replaces the output only when complete. A mask that cannot be exported
(image size unknown, size mismatch, corrupt RLE, label not in the config, empty) is skipped with a message and counted.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from integrations import coco
from integrations.label_studio.errors import LabelConfigError
from integrations.label_studio.labeling_config import parse_label_config
from integrations.masks import MaskError

from .db import Annotation, AnnotationMask, Image, Project

CHUNK = 1000
MAX_MESSAGES = 20  # skip messages printed one by one; the rest are only counted


class ExportError(RuntimeError):
    """The export cannot run at all (unknown project, unusable label config); the message says why."""


@dataclass
class Report:
    images: int = 0
    annotations: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> masks skipped
    skipped_images: int = 0  # images whose size is unknown (not listed; their masks are counted in skipped)
    holes_filled: int = 0  # polygons only
    messages: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def export_coco(session_factory: sessionmaker[Session], ls_project_id: int, out: Path, *, polygons: bool = False,
                latest_only: bool = False, png_dir: Path | None = None, progress: bool = True,
                say: Callable[[str], None] | None = None) -> Report:
    say = say or (lambda text: tqdm.write(text, file=sys.stderr))
    report = Report()
    with session_factory() as session:
        project = session.scalar(select(Project).where(Project.ls_project_id == ls_project_id))
        if project is None:
            raise ExportError(f"no project {ls_project_id} in the database (known projects: "
                              f"{known_projects(session)}); run `clickmask sync --project {ls_project_id}` first")
        labels = categories(project)
        chosen = chosen_annotations(project.id, latest_only)
        total = session.scalar(select(func.count()).select_from(masks_query(chosen).subquery()))

    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.",
                                         suffix=".part", delete=False)
    try:
        with handle, session_factory() as session:
            write_head(handle, project, labels)
            write_images(handle, session, chosen, report, say)
            write_annotations(handle, session, chosen, labels, report, say, total, progress,
                              polygons=polygons, png_dir=png_dir)
            handle.write("]}\n")
        os.replace(handle.name, out)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return report


def known_projects(session: Session) -> str:
    ids = session.scalars(select(Project.ls_project_id).order_by(Project.ls_project_id).limit(20)).all()
    return ", ".join(map(str, ids)) or "none"


def categories(project: Project) -> list[str]:
    if not project.label_config:
        raise ExportError(f"project {project.ls_project_id} has no label config stored; "
                          f"run `clickmask sync --project {project.ls_project_id}` to fetch it")
    try:
        return list(parse_label_config(project.label_config).labels)
    except LabelConfigError as exc:
        raise ExportError(f"project {project.ls_project_id}: the label config cannot be used: {exc}") from None


def chosen_annotations(project_id: int, latest_only: bool):
    """A subquery of the ids of the annotations to export."""
    live = and_(Annotation.project_id == project_id, Annotation.deleted_at.is_(None),
                Annotation.was_cancelled.is_(False))
    if not latest_only:
        return select(Annotation.id.label("id")).where(live).subquery()
    # One group per task; an annotation without a task id is its own group (negated ids cannot meet task ids).
    task = func.coalesce(Annotation.ls_task_id, -Annotation.id)
    rank = func.row_number().over(partition_by=task,
                                  order_by=(Annotation.updated_at.desc(), Annotation.ls_annotation_id.desc()))
    ranked = select(Annotation.id.label("id"), rank.label("rank")).where(live).subquery()
    return select(ranked.c.id).where(ranked.c.rank == 1).subquery()


def masks_query(chosen):
    return (
        select(AnnotationMask.id, AnnotationMask.region_id, AnnotationMask.label, AnnotationMask.height,
               AnnotationMask.width, AnnotationMask.rle_counts, AnnotationMask.area, AnnotationMask.polygon,
               Annotation.ls_annotation_id,
               Annotation.image_id, Image.height.label("image_height"), Image.width.label("image_width"))
        .join(Annotation, AnnotationMask.annotation_id == Annotation.id)
        .outerjoin(Image, Annotation.image_id == Image.id)
        .where(Annotation.id.in_(select(chosen.c.id)))
        .order_by(AnnotationMask.id)
    )


def write_head(handle, project: Project, labels: list[str]) -> None:
    info = {"description": f"clickmask export of Label Studio project {project.ls_project_id}",
            "label_studio_project_id": project.ls_project_id, "title": project.title}
    cats = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(labels, 1)]
    handle.write('{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ' + json.dumps(cats))


def write_images(handle, session: Session, chosen, report: Report, say) -> None:
    query = (select(Image.id, Image.uri, Image.width, Image.height, Image.ls_task_id)
             .where(Image.id.in_(select(Annotation.image_id).where(Annotation.id.in_(select(chosen.c.id)))))
             .order_by(Image.id))
    separator = ""
    handle.write(', "images": [')
    for image_id, uri, width, height, task_id in session.execute(query.execution_options(yield_per=CHUNK)):
        if not width or not height or width < 1 or height < 1:
            report.skipped_images += 1
            note(report, say, f"image {uri!r}: size unknown, not listed and its masks skipped")
            continue
        entry = {"id": image_id, "file_name": coco.file_name(uri), "width": width, "height": height,
                 "uri": uri, "label_studio_task_id": task_id}
        handle.write(separator + json.dumps(entry))
        separator = ", "
        report.images += 1
    handle.write("]")


def write_annotations(handle, session: Session, chosen, labels: list[str], report: Report, say,
                      total: int, progress: bool, *, polygons: bool, png_dir: Path | None) -> None:
    category = {name: i for i, name in enumerate(labels, 1)}
    separator = ""
    handle.write(', "annotations": [')
    rows = session.execute(masks_query(chosen).execution_options(yield_per=CHUNK))
    for row in tqdm(rows, total=total, unit="mask", desc="export", disable=not progress, file=sys.stderr):
        try:
            entry = annotation_entry(row, category, report, polygons=polygons, png_dir=png_dir)
        except MaskError as exc:
            reason = str(exc).split(":")[0]
            report.skipped[reason] += 1
            note(report, say, f"mask {row.id} of annotation {row.ls_annotation_id} skipped: {exc}")
            continue
        handle.write(separator + json.dumps(entry))
        separator = ", "
        report.annotations += 1


def annotation_entry(row, category: dict[str, int], report: Report, *, polygons: bool,
                     png_dir: Path | None) -> dict:
    if not row.image_width or not row.image_height:
        raise MaskError("image size unknown")
    if (row.image_height, row.image_width) != (row.height, row.width):
        raise MaskError(f"size mismatch: mask is {row.width}x{row.height}, "
                        f"image is {row.image_width}x{row.image_height}")
    if row.label not in category:
        raise MaskError(f"label not in the config: {row.label!r} is no label of the project's answer controls")
    try:
        runs = coco.check_counts(row.rle_counts, row.height, row.width)
    except MaskError as exc:
        raise MaskError(f"corrupt RLE: {exc}") from None
    area, bbox = coco.area_and_bbox(runs, row.rle_counts, row.height, row.width)
    if area != row.area:
        raise MaskError(f"corrupt RLE: it covers {area} pixels, the stored area is {row.area}")
    if area == 0:  # a region whose brush strokes were all erased: no object, and polygon tools choke on it
        raise MaskError("empty mask: it has no pixel")
    entry = {"id": row.id, "image_id": row.image_id, "category_id": category[row.label], "area": area,
             "bbox": bbox, "iscrowd": 0, "label_studio_annotation_id": row.ls_annotation_id,
             "label_studio_region_id": row.region_id}
    if polygons or png_dir is not None:
        mask = coco.decode(row.rle_counts, row.height, row.width)
    if row.polygon:  # a polygon region: the annotator's vertices as drawn
        entry["segmentation"] = [[float(v) for v in row.polygon]]
    elif polygons:
        entry["segmentation"], holes = coco.outer_polygons(mask)
        report.holes_filled += holes
    else:
        entry["segmentation"] = coco.rle_dict(row.rle_counts, row.height, row.width)
    if png_dir is not None:
        name = f"{row.id}.png"  # named by the annotation id: nothing from the (untrusted) URI reaches a path
        (png_dir / name).write_bytes(coco.png_bytes(mask))
        entry["mask_file"] = name
    return entry


def note(report: Report, say, text: str) -> None:
    report.messages += 1
    if report.messages <= MAX_MESSAGES:
        say(text)
    elif report.messages == MAX_MESSAGES + 1:
        say("(further skip messages not shown; the counts follow at the end)")
