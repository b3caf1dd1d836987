"""`polymodal embed` (being written)."""


def main(argv: list[str]) -> int:
    raise SystemExit("polymodal embed: not available yet")
