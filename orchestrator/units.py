"""Byte units, so every module counts MiB and GiB the same way."""

MIB = 1024**2
GIB = 1024**3
