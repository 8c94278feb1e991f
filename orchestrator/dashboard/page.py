"""The dashboard as one self-contained HTML page: charts drawn with matplotlib (Agg, no display) and embedded as
base64 PNG, the numbers beside them in tables, no script and nothing fetched, so it opens offline and without
JavaScript. Whatever the database does not hold yet is said in words where its chart would be."""
from __future__ import annotations

import base64
import io
import threading
from datetime import timedelta
from dataclasses import dataclass, field
from html import escape

from .figures import ACCEPT_IOU, ProjectFigures, Spread

COLOURS = {"low": "#1f77b4", "high": "#ff7f0e", "accepted": "#2ca02c", "edited": "#ff7f0e", "drawn": "#7f7f7f",
           "promoted": "#2ca02c", "not promoted": "#ff7f0e", "failed": "#d62728", "cancelled": "#7f7f7f",
           "running": "#1f77b4", "queued": "#9edae5"}
CHARTS = ("clicks-over-time", "clicks-by-version", "acceptance", "noc-by-version", "latency", "jobs")
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:72em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}figure{margin:.5em 0}
img{max-width:100%;height:auto}.missing{color:#8a4b00;background:#fff5e6;padding:.4em .6em}
.note{color:#555;font-size:.92em}"""

# What the backend sends with the page: it holds no script and loads nothing, so nothing else is allowed.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@dataclass
class Rendered:
    html: str
    images: dict[str, bytes] = field(default_factory=dict)  # chart id -> PNG (also inline in the HTML)


# Matplotlib promises no thread safety, and the backend renders in worker threads: one page at a time.
_RENDER_LOCK = threading.Lock()


def render_project(figures: ProjectFigures) -> Rendered:
    with _RENDER_LOCK:
        return _render_project(figures)


def _render_project(figures: ProjectFigures) -> Rendered:
    title = f"clickmask: project {figures.ls_project_id}" + (f" ({figures.title})" if figures.title else "")
    out = Rendered("")
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="note">Generated {figures.generated_at:%Y-%m-%d %H:%M:%S} UTC from the clickmask database. '
            f"Times are UTC.</p>"]
    if not figures.found:
        body.append(_missing(f"The database has no project {figures.ls_project_id}: no click, annotation or "
                             f"fine-tuning job has been recorded for it yet."))
    else:
        body.append(f"<p>{figures.objects} object(s) segmented with {figures.clicks} recorded click(s).</p>")
        for section in (_clicks_over_time, _clicks_by_version, _acceptance, _noc, _latency, _jobs):
            body.append(section(figures, out.images))
    out.html = _document(title, "\n".join(body))
    return out


def render_index(projects: list[tuple[int, str]]) -> str:
    if projects:
        items = "".join(f'<li><a href="?project={pid}">project {pid}</a>' + (f" ({escape(t)})" if t else "")
                        + "</li>" for pid, t in projects)
        body = f"<ul>{items}</ul>"
    else:
        body = _missing("No project recorded yet: the database fills as annotators click in Label Studio.")
    return _document("clickmask dashboard", f"<h1>clickmask dashboard</h1><p>Projects:</p>{body}")


def plain_page(text: str) -> str:
    """A page of one sentence (an error of the dashboard route)."""
    return _document("clickmask dashboard", f"<p>{escape(text)}</p>")


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>\n{body}\n</body></html>\n")


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def _figure(chart: str, fig, alt: str, images: dict) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    images[chart] = buf.getvalue()
    data = base64.b64encode(images[chart]).decode("ascii")
    return (f'<figure id="chart-{chart}"><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"</figure>")


def _table(head: tuple, rows: list[tuple]) -> str:
    cells = "".join(f"<th>{escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _cell(value) -> str:
    text = str(value)
    numeric = text.replace(".", "", 1).replace("-", "", 1).isdigit()
    return f'<td class="n">{text}</td>' if numeric else f"<td>{escape(text)}</td>"


def _legend_above(ax, columns: int) -> None:
    ax.legend(loc="lower center", bbox_to_anchor=(.5, 1.0), ncol=columns, frameon=False)


def _new_figure(height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, height))
    return fig, fig.add_subplot()


def _time_axis(ax, times: list | None = None, bucket: str = "hour") -> None:
    """Dates on the x axis; with `times` (bucket starts), half a bucket of margin each side, so that one bucket
    alone is not spread over years by the automatic limits."""
    import matplotlib.dates as mdates

    if times:
        half = timedelta(hours=12 if bucket == "day" else .5)
        ax.set_xlim(min(times) - half, max(times) + half)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


# ---- sections


def _clicks_over_time(figures: ProjectFigures, images: dict) -> str:
    head = f"<h2>Clicks per object over time (per {figures.bucket})</h2>"
    if not figures.clicks_over_time:
        return head + _missing("No clicks recorded yet for this project.")
    times = [t for t, _ in figures.clicks_over_time]
    spreads = [s for _, s in figures.clicks_over_time]
    fig, ax = _new_figure()
    # The upper percentile first, in larger hollow squares, so an equal median stays visible inside it.
    ax.plot(times, [s.high for s in spreads], "s--", color=COLOURS["high"], mfc="none", ms=11,
            label="90th percentile")
    ax.plot(times, [s.low for s in spreads], "o-", color=COLOURS["low"], label="median")
    ax.set_ylabel("clicks per object")
    ax.set_ylim(bottom=0)
    _legend_above(ax, 2)
    ax.grid(alpha=.3)
    _time_axis(ax, times, figures.bucket)
    rows = [(f"{t:%Y-%m-%d %H:00}", s.n, _f(s.low), _f(s.high)) for t, s in figures.clicks_over_time]
    return (head + _figure("clicks-over-time", fig, "median and 90th percentile of clicks per object, per "
                           + figures.bucket, images)
            + _table(("from (UTC)", "objects", "median", "90th percentile"), rows)
            + '<p class="note">An object is one object on one image clicked by one annotator; its clicks are the '
              "longest click history the backend answered for it.</p>")


def _by_version_bars(ax, rows: list[tuple[str, Spread]], labels: tuple[str, str]) -> None:
    import numpy as np

    x = np.arange(len(rows))
    ax.bar(x - .2, [s.low for _, s in rows], .4, color=COLOURS["low"], label=labels[0])
    ax.bar(x + .2, [s.high for _, s in rows], .4, color=COLOURS["high"], label=labels[1])
    ax.set_xticks(x, [name for name, _ in rows], rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4
                  else "center")
    _legend_above(ax, 2)
    ax.grid(axis="y", alpha=.3)


def _clicks_by_version(figures: ProjectFigures, images: dict) -> str:
    head = "<h2>Clicks per object per model version</h2>"
    if not figures.clicks_by_version:
        return head + _missing("No clicks recorded yet, so no model version has answered one.")
    fig, ax = _new_figure()
    _by_version_bars(ax, figures.clicks_by_version, ("median", "90th percentile"))
    ax.set_ylabel("clicks per object")
    rows = [(name, s.n, _f(s.low), _f(s.high)) for name, s in figures.clicks_by_version]
    return (head + _figure("clicks-by-version", fig, "median and 90th percentile of clicks per object for each "
                           "model version", images)
            + _table(("model version", "objects", "median", "90th percentile"), rows)
            + '<p class="note">An object counts for the version that answered its last click.</p>')


def _acceptance(figures: ProjectFigures, images: dict) -> str:
    a = figures.acceptance
    head = "<h2>Objects accepted without a manual brush edit</h2>"
    rule = (f'<p class="note">A submitted mask counts as accepted without a brush edit when its IoU with a mask '
            f"the model answered (the last click of an object on the same image) is at least {ACCEPT_IOU:g}. Masks "
            f"on an image where no object was clicked were drawn by hand. Deleted and cancelled annotations are "
            f"left out.</p>")
    if not a.masks:
        return head + _missing("No submitted annotation recorded yet (they arrive through Label Studio's "
                               "webhook or `clickmask sync`).") + rule
    fig, ax = _new_figure(1.8)
    left = 0
    for key, count in (("accepted", a.accepted), ("edited", a.edited), ("drawn", a.drawn)):
        if count:
            ax.barh([0], [count], left=left, color=COLOURS[key], label=f"{key}: {count}")
            left += count
    ax.set_yticks([])
    ax.set_xlim(0, a.masks)
    ax.set_xlabel("submitted masks")
    ax.legend(loc="upper center", bbox_to_anchor=(.5, -.45), ncol=3, frameon=False)
    share = 100 * a.accepted / a.masks
    rows = [("accepted as predicted", a.accepted), ("edited with the brush", a.edited),
            ("drawn by hand (no clicks)", a.drawn), ("submitted masks", a.masks)]
    return (head + f"<p>{a.accepted} of {a.masks} submitted masks ({share:.0f}%) were accepted as the model "
                   f"answered.</p>"
            + _figure("acceptance", fig, f"{a.accepted} of {a.masks} masks accepted without a brush edit", images)
            + _table(("masks", "count"), rows) + rule)


def _noc(figures: ProjectFigures, images: dict) -> str:
    import numpy as np

    head = "<h2>NoC on the validation split per model version</h2>"
    measured = [v for v in figures.versions if v.validation and "NoC@85" in v.validation]
    notes = [f"{v.name}: no validation metrics recorded." for v in figures.versions if v not in measured]
    parts = [head]
    if not measured:
        parts.append(_missing("No fine-tuned version with validation metrics yet. The base model's figures are "
                              "measured only as the parent in a fine-tuning job, on that job's validation split."))
    else:
        fig, ax = _new_figure()
        x = np.arange(len(measured))
        for offset, key, colour in ((-.2, "NoC@85", COLOURS["low"]), (.2, "NoC@90", COLOURS["high"])):
            ax.bar(x + offset, [v.validation.get(key, np.nan) for v in measured], .4, color=colour, label=key)
        parents = [(i, v.parent_validation["NoC@85"]) for i, v in enumerate(measured)
                   if v.parent_validation and "NoC@85" in v.parent_validation]
        if parents:
            ax.plot([i - .2 for i, _ in parents], [n for _, n in parents], "k_", markersize=22, mew=2,
                    label="parent NoC@85, same split")
        ax.set_xticks(x, [f"{v.name}\n({v.status})" for v in measured])
        ax.set_ylabel("clicks (lower is better)")
        _legend_above(ax, 3)
        ax.grid(axis="y", alpha=.3)
        parts.append(_figure("noc-by-version", fig, "NoC@85 and NoC@90 on the validation split per version",
                             images))
    rows = []
    for v in figures.versions:
        m, p = v.validation or {}, v.parent_validation or {}
        rows.append((v.name, v.status, v.parent or "-", *(_f(m[k], 2) if k in m else "-" for k in ("NoC@85", "NoC@90")),
                     _f(m["mIoU@5"], 3) if "mIoU@5" in m else "-", _f(p["NoC@85"], 2) if "NoC@85" in p else "-"))
    if rows:
        parts.append(_table(("version", "status", "parent", "NoC@85", "NoC@90", "mIoU@5", "parent NoC@85"), rows))
    parts += [_missing(n) for n in notes]
    parts.append('<p class="note">From the metrics each fine-tuning job recorded: the version and its parent '
                 "evaluated on the same validation objects with the NoC protocol (up to 20 clicks).</p>")
    return "".join(parts)


def _latency(figures: ProjectFigures, images: dict) -> str:
    head = "<h2>Click latency</h2>"
    if figures.latency_all is None:
        return head + _missing("No answered click with a recorded latency yet.")
    fig, ax = _new_figure()
    times = [t for t, _ in figures.latency_over_time]
    ax.plot(times, [s.high for _, s in figures.latency_over_time], "s--", color=COLOURS["high"], mfc="none", ms=11,
            label="p95")
    ax.plot(times, [s.low for _, s in figures.latency_over_time], "o-", color=COLOURS["low"], label="p50")
    ax.set_ylabel("ms per click")
    ax.set_ylim(bottom=0)
    _legend_above(ax, 2)
    ax.grid(alpha=.3)
    _time_axis(ax, times, figures.bucket)
    a = figures.latency_all
    rows = [("all", a.n, _f(a.low), _f(a.high))]
    rows += [(f"{t:%Y-%m-%d %H:00}", s.n, _f(s.low), _f(s.high)) for t, s in figures.latency_over_time]
    rows += [(f"version {name}", s.n, _f(s.low), _f(s.high)) for name, s in figures.latency_by_version]
    return (head + f"<p>p50 {_f(a.low)} ms, p95 {_f(a.high)} ms over {a.n} click(s).</p>"
            + _figure("latency", fig, f"click latency p50 and p95 per {figures.bucket}", images)
            + _table(("clicks", "count", "p50 ms", "p95 ms"), rows)
            + '<p class="note">The time the backend took to answer a click: from receiving it to the encoded '
              "mask (image fetching included), as recorded with each predicted mask.</p>")


def _jobs(figures: ProjectFigures, images: dict) -> str:
    import matplotlib.dates as mdates

    head = "<h2>Fine-tuning jobs</h2>"
    if not figures.jobs:
        return head + _missing("No fine-tuning job yet (they start after enough new annotations, on a schedule, "
                               "from Label Studio's Start training button or `clickmask finetune`).")
    jobs = figures.jobs
    fig, ax = _new_figure(max(1.6, .45 * len(jobs) + 1))
    seen = set()
    for row, job in enumerate(jobs):
        end = job.end or figures.generated_at
        start, width = mdates.date2num(job.start), mdates.date2num(end) - mdates.date2num(job.start)
        width = max(width, 1 / 86400)  # a job that failed at once still shows
        label = None if job.outcome in seen else job.outcome
        seen.add(job.outcome)
        ax.broken_barh([(start, width)], (row - .35, .7), color=COLOURS.get(job.outcome, "#333"), label=label)
    first, last = min(j.start for j in jobs), max(j.end or figures.generated_at for j in jobs)
    pad = max((last - first) * .05, timedelta(seconds=30))
    ax.set_xlim(first - pad, last + pad)
    ax.set_yticks(range(len(jobs)), [f"job {j.id}" for j in jobs])
    ax.invert_yaxis()
    ax.xaxis_date()
    _time_axis(ax)
    ax.legend(loc="upper center", bbox_to_anchor=(.5, -.25), ncol=len(seen), frameon=False)
    ax.grid(axis="x", alpha=.3)
    rows = [(f"job {j.id}", j.trigger, j.outcome, f"{j.start:%Y-%m-%d %H:%M:%S}",
             f"{j.end:%Y-%m-%d %H:%M:%S}" if j.end else "-", j.result_version or "-", j.note or "-") for j in jobs]
    return (head + _figure("jobs", fig, "fine-tuning jobs on a timeline, coloured by outcome", images)
            + _table(("job", "trigger", "outcome", "started (UTC)", "finished (UTC)", "version", "note"), rows))
