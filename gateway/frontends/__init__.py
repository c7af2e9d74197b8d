"""Front-ends: native (asyncio + httptools) and ASGI (uvicorn); both drive one chain."""
