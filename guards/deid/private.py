"""Private attributes: removed by default; the Retain Safe Private Option keeps a documented safe list.

PS3.15 E.3.10 (Retain Safe Private Option): private attributes known to carry no identifying information may be
kept; they are matched by private creator and element (the low byte of the element number, the ``xx`` of
``(gggg,xxee)``), because the block a creator occupies differs from file to file. The list below is a subset of
PS3.15 Table E.3.10-1 "Safe Private Attributes" (2024e) covering acquisition parameters that research on CT and
MR needs (diffusion b-values and directions, pitch, table speed). To add one, append (creator, group, element
byte) with its name and the reason it is safe. Every other private attribute, and every private creator that no
kept attribute needs, is removed.
"""

from __future__ import annotations

SafeKey = tuple[str, int, int]  # (private creator, group, element byte)

SAFE_PRIVATE: dict[SafeKey, str] = {
    ("GEMS_ACQU_01", 0x0019, 0x23): "Table Speed [mm/rotation]",
    ("GEMS_ACQU_01", 0x0019, 0x24): "Mid Scan Time [sec]",
    ("GEMS_ACQU_01", 0x0019, 0x27): "Rotation Speed (Gantry Period)",
    ("GEMS_PARM_01", 0x0043, 0x27): "Scan Pitch Ratio",
    ("SIEMENS MR HEADER", 0x0019, 0x0C): "B_value",
    ("SIEMENS MR HEADER", 0x0019, 0x0D): "DiffusionDirectionality",
    ("SIEMENS MR HEADER", 0x0019, 0x0E): "DiffusionGradientDirection",
    ("SIEMENS MR HEADER", 0x0019, 0x27): "B_matrix",
    ("Philips Imaging DD 001", 0x2001, 0x03): "Diffusion B-Factor",
    ("Philips Imaging DD 001", 0x2001, 0x04): "Diffusion Direction",
}


def is_safe_private(creator: str, group: int, element: int) -> bool:
    """Whether the private element ``(group, element)`` reserved by ``creator`` is on the safe list."""
    return (creator.strip(), group, element & 0xFF) in SAFE_PRIVATE
