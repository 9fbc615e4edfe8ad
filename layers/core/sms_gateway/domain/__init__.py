"""The pure domain: numbers, networks, segments, ids and message states, with no I/O."""
