"""One printed form for every evaluation report, naming the protocol it was measured under."""

from __future__ import annotations

__all__ = ["format_report"]


def format_report(title: str, metrics: dict[str, float], protocol: str) -> str:
    """``title`` and ``protocol`` on the first lines, then one metric per line, sorted."""
    lines = [title, f"  protocol: {protocol}"]
    for name in sorted(metrics):
        value = metrics[name]
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4f}"
        lines.append(f"  {name:<22} {shown}")
    return "\n".join(lines)
