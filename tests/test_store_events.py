"""Label Studio webhook bodies (recorded from Label Studio 1.23.2) into annotation rows, on SQLite and PostgreSQL."""
import logging
import threading

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from sqlalchemy import func, select

from orchestrator.db import Annotation, AnnotationMask, Image, Project
from orchestrator.events import handle_event
from integrations.masks import CocoRle, brush_to_mask, decode

IMAGE_URI = "/data/upload/1/24d941ba-img2.png"


@pytest.fixture
def created(ls_request):
    return ls_request("webhook_annotation_created")


@pytest.fixture
def updated(ls_request):
    """The recorded update, with the mask's label changed so that applying it is visible."""
    body = ls_request("webhook_annotation_updated")
    body["annotation"]["result"][0]["value"]["brushlabels"] = ["Dog"]
    return body


def counts(session_factory):
    with session_factory() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Project, Image, Annotation, AnnotationMask)
        }


def stored(session_factory, ls_id=1):
    with session_factory() as session:
        return session.scalars(select(Annotation).where(Annotation.ls_annotation_id == ls_id)).one()


def labels(session_factory, ls_id=1):
    with session_factory() as session:
        query = select(AnnotationMask.label).join(Annotation).where(Annotation.ls_annotation_id == ls_id)
        return session.scalars(query).all()


def test_created_is_stored_with_its_mask_as_coco_rle(session_factory, created):
    outcome = handle_event(session_factory, created)
    assert outcome.status == "applied", outcome
    brush = created["annotation"]["result"][0]
    expected = brush_to_mask(brush["value"]["rle"], 400, 300)
    with session_factory() as session:
        annotation = session.scalars(select(Annotation)).one()
        assert (annotation.ls_task_id, annotation.completed_by, annotation.lead_time) == (2, 1, 12.3)
        assert annotation.updated_at.isoformat() == "2026-11-25T05:57:52.460419+00:00"
        (mask,) = annotation.masks  # the keypoint and rectangle results are not masks
        assert (mask.region_id, mask.from_name, mask.label) == ("pb2", "brush", "Cat")
        assert (mask.width, mask.height) == (400, 300)
        rle = CocoRle(mask.rle_counts, mask.height, mask.width, mask.area)
        assert np.array_equal(decode(rle), expected) and mask.area == expected.sum() > 0
        image = session.scalars(select(Image)).one()
        assert (image.uri, image.width, image.height, image.ls_task_id) == (IMAGE_URI, 400, 300, 2)
        project = session.scalars(select(Project)).one()
        assert project.ls_project_id == 1 and project.title == "smartclick-seg"
        assert project.label_config.startswith("<View>")


def test_an_image_first_seen_through_clicks_gets_its_task_id(session_factory, created):
    with session_factory.begin() as session:  # what recording a click leaves: the image, with no task id
        project = Project(ls_project_id=1)
        session.add(project)
        session.flush()
        session.add(Image(project_id=project.id, uri=IMAGE_URI, width=400, height=300))
    assert handle_event(session_factory, created).status == "applied"
    with session_factory() as session:
        image = session.scalars(select(Image)).one()
        assert (image.uri, image.ls_task_id) == (IMAGE_URI, 2)
        assert session.scalars(select(Annotation.image_id)).one() == image.id


def test_duplicate_delivery_changes_nothing(session_factory, created):
    handle_event(session_factory, created)
    before = counts(session_factory)
    outcome = handle_event(session_factory, created)
    assert outcome.status == "ignored" and "already stored" in outcome.reason
    assert counts(session_factory) == before == {"projects": 1, "images": 1, "annotations": 1, "annotation_masks": 1}


def test_update_replaces_masks_and_a_late_older_event_is_ignored(session_factory, created, updated):
    handle_event(session_factory, created)
    assert handle_event(session_factory, updated).status == "applied"
    assert labels(session_factory) == ["Dog"]
    assert handle_event(session_factory, created).status == "ignored"  # older updated_at
    assert labels(session_factory) == ["Dog"]
    assert counts(session_factory)["annotation_masks"] == 1


def test_update_arriving_before_create(session_factory, created, updated):
    assert handle_event(session_factory, updated).status == "applied"
    assert handle_event(session_factory, created).status == "ignored"
    assert labels(session_factory) == ["Dog"]
    assert stored(session_factory).updated_at.isoformat() == "2026-11-25T05:57:54.398951+00:00"


def test_deletion_removes_masks_and_keeps_the_annotation_deleted(session_factory, created, updated, ls_request):
    handle_event(session_factory, created)
    deletion = ls_request("webhook_annotations_deleted")
    deletion["annotations"] = [{"id": 1}]
    assert handle_event(session_factory, deletion).status == "applied"
    assert stored(session_factory).deleted_at is not None
    assert counts(session_factory)["annotation_masks"] == 0
    # A late update must not bring it back.
    outcome = handle_event(session_factory, updated)
    assert outcome.status == "ignored" and "deleted" in outcome.reason
    assert counts(session_factory)["annotation_masks"] == 0
    assert handle_event(session_factory, deletion).status == "applied"  # deleting again is harmless


def test_deletion_before_creation_leaves_a_tombstone(session_factory, created, ls_request):
    deletion = ls_request("webhook_annotations_deleted")  # as recorded: annotation 2, never created here
    assert handle_event(session_factory, deletion).status == "applied"
    created["annotation"]["id"] = 2
    assert handle_event(session_factory, created).status == "ignored"
    assert stored(session_factory, 2).deleted_at is not None
    assert counts(session_factory)["annotation_masks"] == 0


@pytest.mark.parametrize("name", ["webhook_start_training", "webhook_tasks_created"])
def test_other_label_studio_events_are_ignored(session_factory, ls_request, name):
    outcome = handle_event(session_factory, ls_request(name))
    assert outcome.status == "ignored" and outcome.reason == "not an annotation event"
    assert counts(session_factory)["projects"] == 0


def break_body(body, how):
    annotation, brush = body["annotation"], body["annotation"]["result"][0]
    if how == "unknown action":
        body["action"] = "ANNOTATION_EXPLODED"
    elif how == "no annotation":
        del body["annotation"]
    elif how == "no annotation id":
        del annotation["id"]
    elif how == "id is text":
        annotation["id"] = "1"
    elif how == "id beyond 64 bits":
        annotation["id"] = 2**63
    elif how == "project id beyond 64 bits":
        body["project"]["id"] = 2**70
    elif how == "no project":
        del body["project"]
    elif how == "bad time":
        annotation["updated_at"] = "yesterday"
    elif how == "result not a list":
        annotation["result"] = {"oops": 1}
    elif how == "rle for another size":
        brush["original_width"] = 401
    elif how == "rle truncated":
        brush["value"]["rle"] = brush["value"]["rle"][:40]
    elif how == "rle not bytes":
        brush["value"]["rle"] = [300] * 40
    elif how == "rle huge header":
        brush["value"]["rle"] = [255, 255, 255, 255] + brush["value"]["rle"][4:]
    elif how == "zero width":
        brush["original_width"] = 0
    elif how == "polygon not rle":
        brush["value"]["format"] = "polygon"
    elif how == "no image":
        body["task"]["data"] = {}
    return body


REJECTED = ["no annotation", "no annotation id", "id is text", "id beyond 64 bits", "project id beyond 64 bits",
            "no project", "bad time", "result not a list",
            "rle for another size", "rle truncated", "rle not bytes", "rle huge header", "zero width",
            "polygon not rle", "no image"]


@pytest.mark.parametrize("how", REJECTED + ["unknown action"])
def test_bad_bodies_are_refused_with_a_logged_reason_and_write_nothing(session_factory, created, caplog, how):
    caplog.set_level(logging.INFO, logger="orchestrator.events")
    outcome = handle_event(session_factory, break_body(created, how))
    assert outcome.status == ("ignored" if how == "unknown action" else "rejected"), outcome
    assert outcome.reason and outcome.reason in caplog.text
    assert counts(session_factory) == {"projects": 0, "images": 0, "annotations": 0, "annotation_masks": 0}


def test_a_from_name_that_is_no_string_is_stored_without_it(session_factory, created):
    created["annotation"]["result"][0]["from_name"] = ["brush"]  # a list: it used to raise TypeError
    assert handle_event(session_factory, created).status == "applied"
    with session_factory() as session:
        (mask,) = session.scalars(select(AnnotationMask)).all()
        assert (mask.from_name, mask.label) == ("", "Cat")


@pytest.mark.parametrize("body", [None, [], "ANNOTATION_CREATED", {"action": None}])
def test_bodies_that_are_not_events(session_factory, body):
    assert handle_event(session_factory, body).status in ("rejected", "ignored")


def test_mask_not_matching_the_known_image_size_is_refused_whole(session_factory, created, updated, caplog):
    handle_event(session_factory, created)  # the image is now known as 400x300
    small = np.zeros((150, 200), np.uint8)
    small[10:50, 10:50] = 255
    other = updated
    other["annotation"]["id"] = 5
    other["project"]["title"] = "renamed"
    brush = other["annotation"]["result"][0]
    brush.update(original_width=200, original_height=150)
    brush["value"]["rle"] = mask2rle(small)
    outcome = handle_event(session_factory, other)
    assert outcome.status == "rejected" and "200x150" in outcome.reason and "400x300" in outcome.reason
    assert outcome.reason in caplog.text
    assert counts(session_factory) == {"projects": 1, "images": 1, "annotations": 1, "annotation_masks": 1}
    with session_factory() as session:
        assert session.scalar(select(Project.title)) == "smartclick-seg"  # the project update was rolled back too


def test_concurrent_deliveries_of_the_same_event_store_it_once(session_factory, created):
    outcomes, barrier = [], threading.Barrier(4)

    def deliver():
        barrier.wait()
        outcomes.append(handle_event(session_factory, created).status)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["applied", "ignored", "ignored", "ignored"]
    assert counts(session_factory) == {"projects": 1, "images": 1, "annotations": 1, "annotation_masks": 1}


def with_polygon(body, points, **changes):
    """The recorded annotation with its brush region replaced by a polygon region of a PolygonLabels control."""
    project = body["project"]
    project["parsed_label_config"]["poly"] = {**project["parsed_label_config"]["brush"], "type": "PolygonLabels"}
    region = {"id": "pg1", "from_name": "poly", "to_name": "image", "type": "polygonlabels",
              "original_width": 400, "original_height": 300, "image_rotation": 0,
              "value": {"points": points, "closed": True, "polygonlabels": ["Dog"]}, **changes}
    body["annotation"]["result"][0] = region
    return body


def test_a_polygon_region_is_stored_as_the_mask_it_draws_with_its_vertices(session_factory, created):
    from integrations.polygons import draw

    points = [[10.0, 10.0], [60.5, 12.25], [55.0, 80.0], [12.5, 70.0]]  # percent
    outcome = handle_event(session_factory, with_polygon(created, points))
    assert outcome.status == "applied", outcome
    pixels = [[x / 100 * 400, y / 100 * 300] for x, y in points]  # as Label Studio's COCO export computes them
    with session_factory() as session:
        (mask,) = session.scalars(select(AnnotationMask)).all()
        assert (mask.from_name, mask.label, mask.width, mask.height) == ("poly", "Dog", 400, 300)
        assert mask.polygon == [v for point in pixels for v in point]
        stored_mask = decode(CocoRle(mask.rle_counts, mask.height, mask.width, mask.area))
        assert np.array_equal(stored_mask, draw([np.array(pixels)], 400, 300)) and mask.area > 20_000
        assert session.scalars(select(Image)).one().uri == IMAGE_URI


@pytest.mark.parametrize("points, changes, message", [
    ([[10, 10], [20, 20]], {}, "3 to 20000"),
    ([[10, 10]] * 20_001, {}, "3 to 20000"),
    ([[10, 10], [20, "x"], [5, 5]], {}, "pairs of percentages"),
    ([[10, 10], [20, float("nan")], [5, 5]], {}, "pairs of percentages"),
    ([[10, 10], [20, 1e9], [5, 5]], {}, "pairs of percentages"),
    ([[10, 10], [20, 20, 3], [5, 5]], {}, "pairs of percentages"),
    ([[10, 10], [20, 20], [5, 5]], {"original_width": 0}, "positive integer"),
    ([[10, 10], [20, 20], [5, 5]], {"original_width": 100_000, "original_height": 100_000}, "larger than"),
    ({"x": 1}, {}, "3 to 20000"),
])
def test_a_broken_polygon_region_rejects_the_event_and_stores_nothing(session_factory, created, points, changes,
                                                                       message):
    outcome = handle_event(session_factory, with_polygon(created, points, **changes))
    assert outcome.status == "rejected" and message in outcome.reason, outcome
    assert counts(session_factory)["annotation_masks"] == 0
