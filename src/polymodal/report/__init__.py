"""Self-contained HTML reports: `render_report(results) -> str`, `write_report(results, path)`, and the hand-written
inline SVG charts they use (`polymodal.report.plots`). See `polymodal.report.html` for the results dict."""

from .html import png_data_uri, render_report, wav_data_uri, write_report
from .plots import Series, bar_chart, line_chart

__all__ = ["Series", "bar_chart", "line_chart", "png_data_uri", "render_report", "wav_data_uri", "write_report"]
