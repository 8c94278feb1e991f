"""Benchmark of `clickmask export --format coco` (not a test; pytest does not collect bench_*.py).

For each database (a SQLite file, a throwaway PostgreSQL database: CLICKMASK_TEST_POSTGRES_URL or the local
default) and each size (--sizes, default 10,000 and 100,000 annotations), synthetic annotations are bulk-inserted
(one 854x480 object mask each, 5 annotations per image, masks from 64 distinct ellipses), then the export runs
--runs times, each in a fresh subprocess: the export's own wall time is measured inside it, and the subprocess's
peak resident memory (ru_maxrss from wait4) outside it. A subprocess exporting an empty project gives the baseline
memory of the interpreter and its imports, so "peak - baseline" is what the data costs. Medians are printed.

Run: nice -n 15 .venv/bin/python tests/bench_export.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, UTC
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

H, W = 480, 854
PER_IMAGE = 5
CHUNK = 5000
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Part"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels></View>"""


def blob_mask(i: int) -> np.ndarray:
    yy, xx = np.ogrid[:H, :W]
    cy, cx = 140 + (i * 37) % 200, 200 + (i * 53) % 450
    ry, rx = 40 + i % 60, 60 + i % 90
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def fill(url: str, count: int, ls_project_id: int) -> float:
    """Bulk-insert `count` annotations with one mask each into a new project; returns the seconds it took."""
    from sqlalchemy import insert

    from orchestrator.db import Annotation, AnnotationMask, Image, Project, make_engine
    from integrations.masks import encode

    rles = [encode(blob_mask(i)) for i in range(64)]
    t0, start = datetime(2026, 1, 1, tzinfo=UTC), time.perf_counter()
    engine = make_engine(url)
    with engine.begin() as connection:
        project_id = connection.execute(insert(Project).values(ls_project_id=ls_project_id, title="bench",
                                                               label_config=CONFIG)).inserted_primary_key[0]
    # Ids are given explicitly so masks can point to their annotations without reading anything back.
    with engine.begin() as connection:
        base_image = connection.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM images").scalar()
        base_annotation = connection.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM annotations").scalar()
        base_ls = connection.exec_driver_sql("SELECT COALESCE(MAX(ls_annotation_id), 0) FROM annotations").scalar()
    for first in range(0, count, CHUNK):
        numbers = range(first, min(count, first + CHUNK))
        images = [{"id": base_image + n // PER_IMAGE + 1, "project_id": project_id, "width": W, "height": H,
                   "uri": f"s3://bench/{ls_project_id}/{n // PER_IMAGE}.jpg", "ls_task_id": n // PER_IMAGE + 1}
                  for n in numbers if n % PER_IMAGE == 0]
        annotations = [{"id": base_annotation + n + 1, "ls_annotation_id": base_ls + n + 1, "project_id": project_id,
                        "image_id": base_image + n // PER_IMAGE + 1, "ls_task_id": n // PER_IMAGE + 1,
                        "updated_at": t0 + timedelta(seconds=n), "was_cancelled": False} for n in numbers]
        masks = [{"annotation_id": base_annotation + n + 1, "region_id": f"r{n}", "from_name": "tag",
                  "label": "Object" if n % 3 else "Part", "height": H, "width": W,
                  "rle_counts": rles[n % 64].counts, "area": rles[n % 64].area} for n in numbers]
        with engine.begin() as connection:
            connection.execute(insert(Image), images)
            connection.execute(insert(Annotation), annotations)
            connection.execute(insert(AnnotationMask), masks)
    if engine.dialect.name == "postgresql":  # explicit ids leave the sequences behind; keep the database usable
        with engine.begin() as connection:
            for table in ("images", "annotations"):
                connection.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                           f"(SELECT MAX(id) FROM {table}))")
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - start


def child(url: str, ls_project_id: int, out: str, options: list[str]) -> None:
    """Runs in the measured subprocess: one export, its wall time printed as JSON."""
    from orchestrator.coco_export import export_coco
    from orchestrator.db import make_engine, make_session_factory

    engine = make_engine(url)
    start = time.perf_counter()
    report = export_coco(make_session_factory(engine), ls_project_id, Path(out), polygons="polygons" in options,
                         progress=False, say=lambda _: None)
    seconds = time.perf_counter() - start
    engine.dispose()
    print(json.dumps({"seconds": seconds, "annotations": report.annotations, "skipped": report.skipped_total}))


def measure(url: str, ls_project_id: int, out: Path, options: list[str]) -> dict:
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", url, str(ls_project_id), str(out), *options],
        stdout=subprocess.PIPE, cwd=ROOT,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"export subprocess failed with {process.returncode}")
    figures = json.loads(output)
    figures["maxrss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return figures


def bench(name: str, url: str, sizes: list[int], runs: int, options: list[str], workdir: Path) -> list[dict]:
    from alembic import command

    from migrations import alembic_config

    command.upgrade(alembic_config(url), "head")
    fill(url, 0, 1)  # an empty project: the baseline
    baseline = statistics.median(measure(url, 1, workdir / "empty.json", options)["maxrss_mb"] for _ in range(runs))
    rows = []
    for number, size in enumerate(sizes, 2):
        insert_s = fill(url, size, number)
        results = [measure(url, number, workdir / f"{name}-{size}.json", options) for _ in range(runs)]
        assert all(r["annotations"] == size and r["skipped"] == 0 for r in results), results
        row = {
            "database": name, "annotations": size, "insert_s": round(insert_s, 1),
            "export_s_median": round(statistics.median(r["seconds"] for r in results), 2),
            "export_s_all": [round(r["seconds"], 2) for r in results],
            "per_1000_ms": round(1000 * statistics.median(r["seconds"] for r in results) / size * 1000, 1),
            "maxrss_mb_median": round(statistics.median(r["maxrss_mb"] for r in results), 1),
            "baseline_mb": round(baseline, 1),
            "file_mb": round((workdir / f"{name}-{size}.json").stat().st_size / 2**20, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--polygons", action="store_true", help="measure the polygon export instead of RLE")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    options = ["polygons"] if args.polygons else []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
        workdir = Path(folder)
        for name in args.databases.split(","):
            if name == "sqlite":
                bench(name, f"sqlite:///{workdir / 'bench.db'}", sizes, args.runs, options, workdir)
            else:
                from store_support import create_database, drop_database, postgres_server_url

                url = create_database(postgres_server_url(), prefix="clickmask_bench")
                try:
                    bench(name, url.render_as_string(hide_password=False), sizes, args.runs, options, workdir)
                finally:
                    drop_database(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
