"""Print the CONVEYOR_* settings as a Markdown table (the README's settings section).

    python scripts/settings_table.py
"""

from __future__ import annotations

from pydantic import SecretStr

from conveyor.settings import Settings


def rows() -> list[tuple[str, str, str]]:
    table = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in default) or None
        if isinstance(default, SecretStr):
            default = "(secret)"
        shown = "" if default is None else str(default)
        table.append((f"CONVEYOR_{name.upper()}", f"`{shown}`" if shown else "", field.description or ""))
    return table


def markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | {default} | {meaning} |" for var, default, meaning in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
