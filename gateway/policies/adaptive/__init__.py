"""``adaptive``: a load-aware concurrency limit (AIMD on upstream latency) that sheds with 503."""
