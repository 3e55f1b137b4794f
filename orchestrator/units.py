"""Byte units, so every module counts KiB, MiB and GiB the same way."""

KIB = 1024
MIB = 1024**2
GIB = 1024**3
