"""``concurrency``: an in-flight limit per route with an optional small FIFO queue."""
