"""Plain-text tables for terminals and logs (no dependency)."""

from __future__ import annotations


def fmt(v, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return "" if v is None else str(v)


def table(rows: list[dict], columns: list[str] | None = None, title: str = "") -> str:
    """Left-aligned text, right-aligned numbers; columns default to every row's keys, in first-seen order."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows if r.get(c) is not None)
        for c in columns
    ]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)
