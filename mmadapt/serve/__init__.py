"""``mmadapt serve``: versions of recipes behind OpenAI-compatible endpoints (app.py), with a live
registry (live.py), a worker and a bounded queue per loaded version (pool.py), an A/B split
(split.py), request and feedback logs (log.py) and the wire format and limits (wire.py)."""
