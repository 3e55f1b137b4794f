"""Standby engines: a process that has imported the engine's Python and runs it on a trigger."""
