"""Pure protocol layer: bytes in, events out, time passed in. No asyncio, no sockets."""
