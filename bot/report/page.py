"""The report as HTML: one self-contained page (inline CSS and SVG, no script, no network).

`render_body` is the part a Flyte Deck shows (Flyte wraps it in its own page);
`render_page` adds the document around it for the file maintainers open.
Every text from the database is escaped; user ids never reach this module.
"""

from __future__ import annotations

from html import escape
from typing import Any

from flytegpt.bot.report import charts
from flytegpt.bot.report.build import PERCENTILES, Report

STYLE = """
.flytegpt-report{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;max-width:960px;margin:0 auto;padding:8px 16px}
.flytegpt-report h1{font-size:22px;margin:8px 0 2px}.flytegpt-report h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.flytegpt-report h3{font-size:15px;margin:14px 0 4px}
.flytegpt-report table{border-collapse:collapse;margin:6px 0}.flytegpt-report td,.flytegpt-report th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
.flytegpt-report td.n,.flytegpt-report th.n{text-align:right;font-variant-numeric:tabular-nums}
.flytegpt-report .muted{color:#666}.flytegpt-report .note{background:#fff8e1;padding:6px 10px;border-left:3px solid #f9a825;margin:6px 0}
.flytegpt-report .cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.flytegpt-report .card{border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:92px}
.flytegpt-report .card b{display:block;font-size:20px}
.flytegpt-report svg{max-width:100%;height:auto;display:block;margin:6px 0}
.flytegpt-report svg .axis{font-size:11px;fill:#555}.flytegpt-report svg .legend{font-size:12px;fill:#333}
.flytegpt-report svg .grid{stroke:#e5e5e5}
.flytegpt-report details{margin:4px 0}.flytegpt-report summary{cursor:pointer}
.flytegpt-report ol.topic{margin:4px 0 10px;padding-left:22px}
"""


def _link(text: str, url: str | None) -> str:
    if url and url.startswith(("https://", "http://")):
        return f'<a href="{escape(url)}" target="_blank" rel="noopener">{escape(text)}</a>'
    return escape(text)


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(r: Report) -> str:
    t = r.totals
    cards = [("questions", t["questions"]), ("answered", t["answered"]), ("not found", t["not_found"]),
             ("model failed", t["model_failed"]), ("failed", t["failed"]), ("voted up", t["up"]),
             ("voted down", t["down"]), ("people asking", t["askers"])]
    html = '<div class="cards">' + "".join(f'<div class="card"><b>{v:,}</b>{escape(k)}</div>' for k, v in cards) + "</div>"
    if r.failures:
        kinds = ", ".join(f"{n:,} {escape(k.replace('_', ' '))}" for k, n in r.failures.items())
        html += f'<p class="muted">Questions without an answer, by cause: {kinds}.</p>'
    left = r.left_out
    if any(left.values()):
        html += (f'<p class="muted">Left out for privacy: {left.get("dm", 0):,} questions in DMs or the assistant '
                 f'panel, {left.get("private", 0):,} from private channels and group DMs and '
                 f'{left.get("untyped", 0):,} from channels that may be private (see the notes) not named in '
                 f'<code>[bot] report_channels</code>, {left.get("channel", 0):,} from channels outside '
                 '<code>[bot] report_channels</code>.</p>')
    return html


def _activity(r: Report) -> str:
    surfaces = {k: v for k, v in r.per_day_surface.items() if any(v)} or {"mention": [0] * len(r.days)}
    return ("<h2>Questions per day</h2>"
            + charts.stacked_bars("outcomes-per-day", r.days, r.per_day_outcome, title="Questions per day by outcome")
            + "<h3>Votes on the answers</h3>"
            + charts.stacked_bars("votes-per-day", r.days, r.per_day_votes, title="Answers voted up / down per day",
                                  stacked=False, height=200)
            + "<h3>Per surface</h3>"
            + charts.stacked_bars("surfaces-per-day", r.days, surfaces, title="Questions per day by surface")
            + _table(["surface", "questions"], [[escape(charts.label(k)), f"{sum(v):,}"] for k, v in surfaces.items()],
                     {1}))


def _gaps(r: Report) -> str:
    html = ["<h2>Knowledge gaps</h2>",
            '<p class="muted">Questions the bot could not answer, or whose answer was voted down, grouped into '
            "topics by the index's own embedding model; each topic is named after its most central question.</p>"]
    if not r.topics:
        return "".join(html) + "<p>None in this period.</p>"
    rows = [[str(i), escape(t.label), f"{t.size:,}"] for i, t in enumerate(r.topics[:20], 1)]
    html.append(charts.horizontal_bars("gap-topics", [(t.label, t.size) for t in r.topics[:15]],
                                       title="Questions per knowledge-gap topic", series="not_found"))
    html.append(_table(["#", "topic", "questions"], rows, {2}))
    for i, t in enumerate(r.topics, 1):
        items = []
        for q in t.questions:
            why = "not found" if q["outcome"] == "not_found" else "voted down"
            items.append(f"<li>{_link(q['question'][:400], q.get('link'))} "
                         f'<span class="muted">({q["day"]}, {escape(why)}, {escape(charts.label(q["surface"]))})</span></li>')
        html.append(f"<details{' open' if i <= 3 else ''}><summary><b>{i}. {escape(t.label[:200])}</b> "
                    f'<span class="muted">{t.size} question{"s" if t.size != 1 else ""}</span></summary>'
                    f'<ol class="topic">{"".join(items)}</ol></details>')
    return "".join(html)


def _sources(r: Report) -> str:
    html = ["<h2>Sources</h2>"]
    if r.most_cited:
        html.append("<h3>Most cited</h3>")
        html.append(charts.horizontal_bars("most-cited", [(s["title"] or s["source_id"], s["count"]) for s in r.most_cited],
                                           title="Most cited sources", series="answered"))
        html.append(_table(["source", "kind", "answers citing it"],
                           [[_link(s["title"] or s["source_id"], s["url"]) + f' <span class="muted">{escape(s["source_id"])}</span>',
                             escape(s["kind"]), f"{s['count']:,}"] for s in r.most_cited], {2}))
        html.append("<h3>Least cited (cited at least once)</h3>")
        html.append(_table(["source", "kind", "answers citing it"],
                           [[_link(s["title"] or s["source_id"], s["url"]) + f' <span class="muted">{escape(s["source_id"])}</span>',
                             escape(s["kind"]), f"{s['count']:,}"] for s in r.least_cited], {2}))
    else:
        html.append("<p>No answer cited a source in this period.</p>")
    html.append("<h3>Never cited in this period</h3>")
    if not r.catalog_size:
        html.append('<p class="muted">Needs the index store (<code>--store</code>).</p>')
        return "".join(html)
    total_never = sum(len(v) for v in r.never_cited.values())
    html.append(f"<p>{total_never:,} of the {r.catalog_size:,} sources in the published index were never cited.</p>")
    for name, items in sorted(r.never_cited.items()):
        lis = "".join(f"<li>{_link(s.title or s.source_id, s.url)}</li>" for s in items[:200])
        more = f"<li class=muted>… and {len(items) - 200:,} more</li>" if len(items) > 200 else ""
        html.append(f"<details><summary>{escape(name)}: {len(items):,} never cited</summary><ul>{lis}{more}</ul></details>")
    return "".join(html)


def _index(r: Report) -> str:
    html = ["<h2>The index over time</h2>"]
    if not r.versions:
        return "".join(html) + '<p class="muted">No index versions (give <code>--store</code>).</p>'
    names = sorted({n for v in r.versions for n in v["counts"]})
    cats = [v["version"] for v in r.versions]
    series = {n: [v["counts"].get(n, 0) for v in r.versions] for n in names}
    html.append(charts.lines("chunks-per-version", cats, series, title="Chunks per source in each index version"))
    has_eval = any(v["eval"] for v in r.versions)
    headers = ["version", "created", "chunks", "per source", "questions answered on it"]
    if has_eval:
        headers += ["recall@5", "recall@10", "MRR@10"]
    rows = []
    for v in reversed(r.versions):
        row = [escape(v["version"]) + (" <b>(LATEST)</b>" if v["latest"] else ""), escape(v["created_at"]),
               f"{v['chunks']:,}", escape(", ".join(f"{k} {n:,}" for k, n in sorted(v["counts"].items()))),
               f"{v['questions']:,}"]
        if has_eval:
            e = v["eval"] or {}
            if e.get("left_out"):  # could not be opened or searched: the reason is among the notes
                row += ['<span class="muted">left out (see notes)</span>', "", ""]
            else:
                row += [f"{e[k]:.3f}" if k in e else "" for k in ("recall@5", "recall@10", "mrr@10")]
        rows.append(row)
    html.append(_table(headers, rows, {2, 4, 5, 6, 7}))
    return "".join(html)


def _latency(r: Report) -> str:
    html = ["<h2>Answer latency</h2>"]
    if not r.latency:
        return "".join(html) + "<p>No latencies recorded in this period.</p>"
    overall = r.latency[0]
    html.append(charts.horizontal_bars("latency-percentiles",
                                       [(f"p{p}", round(overall[f"p{p}"], 2)) for p in PERCENTILES]
                                       + [("max", round(overall["max"], 2))],
                                       title="Seconds from question to answer", series="mention", unit=" s"))
    html.append(_table(["group", "n"] + [f"p{p} (s)" for p in PERCENTILES] + ["max (s)"],
                       [[escape(row["group"]), f"{row['n']:,}"] + [f"{row[f'p{p}']:.2f}" for p in PERCENTILES]
                        + [f"{row['max']:.2f}"] for row in r.latency], set(range(1, 7))))
    return "".join(html)


def render_body(r: Report) -> str:
    """The report's content with its style, for embedding (the Flyte Deck)."""
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in r.notes)
    return (f"<style>{STYLE}</style><div class=\"flytegpt-report\">"
            f"<h1>FlyteGPT report</h1><p class=\"muted\">Questions from {r.start} to {r.end} (UTC), "
            f"generated {escape(r.generated_at)}. Counts only: no Slack user is named.</p>{notes}"
            + _summary(r) + _activity(r) + _gaps(r) + _sources(r) + _index(r) + _latency(r) + "</div>")


def render_page(r: Report) -> str:
    """A complete HTML document that opens from disk, offline."""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>FlyteGPT report {r.start} to {r.end}</title></head><body>{render_body(r)}</body></html>")
