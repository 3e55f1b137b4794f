"""Byte units, so every module counts KiB, MiB and GiB the same way."""

KIB = 1024
MIB = 1024**2
GIB = 1024**3


def gib_text(n: int) -> str:
    """Bytes as GiB with one decimal, the way tables show memory."""
    return f"{n / GIB:.1f} GiB"
