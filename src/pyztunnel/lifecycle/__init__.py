"""Proxy lifecycle: drain on shutdown (drain.py pure, drainer.py asyncio) and listener handoff between instances
(handoff.py pure protocol and validation, handoff_io.py the unix-socket shell). See docs/lifecycle.md."""
