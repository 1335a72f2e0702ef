"""The pilot's side of the wire: RAPTOR master, MPI worker ranks, one task on one rank."""
