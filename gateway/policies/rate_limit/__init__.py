"""``rate_limit``: token bucket, sliding and fixed windows by ip, header, JWT claim or route.

``config.py`` (the options), ``keys.py`` (what is counted), ``jwt.py`` (bearer token
verification), ``algorithms.py`` (the algorithms and their memory twins; the Redis
halves are ``gateway/stores/lua/rl_*.lua``), ``fields.py`` (the ``RateLimit`` fields and
the 429), ``give_back.py`` (what an admission took, given back when a later limiter
refuses), ``admit.py`` (the request written from the store's reply), ``policy.py`` (the
chain element).
"""
