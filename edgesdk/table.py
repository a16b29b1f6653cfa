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


def cell(text: str):
    """One printed cell back as a value: yes/no -> bool, an empty cell -> None, numbers, else the text."""
    if text in ("yes", "no"):
        return text == "yes"
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse(text: str, title: str = "") -> list[dict]:
    """The rows of a table() in TEXT (the first one, or the first under a line equal to TITLE), as dicts.
    Columns are taken from the dashed rule under the header, so empty cells read back as None; floats
    come back at the printed precision (fmt). No table there -> []."""
    lines = text.splitlines()
    start = lines.index(title) + 1 if title and title in lines else 0
    for i in range(start, len(lines) - 1):
        rule = lines[i + 1]
        if rule and set(rule) <= {"-", " "} and "-" in rule and len(lines[i].split()) == len(rule.split()):
            spans, pos = [], 0
            for dashes in rule.split():
                pos = rule.index(dashes, pos)
                spans.append((pos, pos + len(dashes)))
                pos += len(dashes)
            header = [lines[i][a:b].strip() for a, b in spans]
            rows = []
            gaps = [(b, a2) for (_, b), (a2, _) in zip(spans, spans[1:])]
            for line in lines[i + 2 :]:
                # a row has every cell within its rule and spaces between: the first line that does
                # not (a blank line, the prose after a table) ends the table
                if not line.strip() or len(line) > len(rule) or any(line[a:b].strip() for a, b in gaps):
                    break
                rows.append({h: cell(line[a:b].strip()) for h, (a, b) in zip(header, spans)})
            return rows
    return []
