"""Sans-IO protocol code: bytes and events in, bytes and actions out. No asyncio, no sockets here."""
