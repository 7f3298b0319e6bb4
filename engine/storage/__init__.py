"""A worker slot's data on disk: slot store, write-ahead log and its generations, snapshots, recovery, dead letters."""
