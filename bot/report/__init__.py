"""The maintainers' report: what the community asks and where the knowledge base falls short.

`build_report` reads the bot's question log and the index store; `render_page` writes one
self-contained HTML page, `render_body` the same content for a Flyte Deck.
"""

from flytegpt.bot.report.build import Report, ReportOptions, build_report, parse_since
from flytegpt.bot.report.page import render_body, render_page

__all__ = ["Report", "ReportOptions", "build_report", "parse_since", "render_body", "render_page"]
