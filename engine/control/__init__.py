"""What crosses process boundaries: the instance's shared memory, typed records with their single writer, backpressure state, spaces, sessions and query slots."""
