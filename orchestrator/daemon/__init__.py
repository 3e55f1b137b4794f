"""The daemon process: serve(), signals, systemd notify, open-file budget, state_dir lock."""
