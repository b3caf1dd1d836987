"""`polymodal export` (being written)."""


def main(argv: list[str]) -> int:
    raise SystemExit("polymodal export: not available yet")
