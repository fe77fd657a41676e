"""The Markdown tables of RESULTS.md."""


def row(cells: list[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    """The header, its rule, a line per row."""
    return [row(header), "|" + "---|" * len(header), *map(row, rows)]
