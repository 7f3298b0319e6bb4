"""The supervisor process: start-up checks, the arbiter loop, restart policy, signals, salvage of a killed run."""
