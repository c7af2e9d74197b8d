"""What this installation runs: the compiled request path, or pure Python.

``setup.py`` compiles the request path's modules with mypyc when it can; each compiled
module is an extension file beside (or, installed, instead of) its ``.py`` file, and
Python imports the extension first. This module tells which, without importing them,
and which compiled modules are older than their source (an editable install that was
not rebuilt after an edit runs the old code).
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

#: The modules ``setup.py`` compiles: those a request runs through, in the native and
#: ASGI front-ends, the transports, the policies, the stores and observability. Left
#: out: classes other code subclasses (``policies/base.py``: tests and plugins define
#: policies) or holds weak references to (``stores/memory.py``): mypyc's classes allow
#: neither; config loading and the CLI, which run once; and modules with async
#: generators, which mypyc does not have.
COMPILED = [
    "gateway.chain",
    "gateway.config.snapshot",
    "gateway.exchange",
    "gateway.routing",
    "gateway.frontends.asgi",
    "gateway.frontends.common",
    "gateway.frontends.native",
    "gateway.frontends.native_conn",
    "gateway.frontends.trailers",
    "gateway.frontends.native_request",
    "gateway.frontends.native_send",
    "gateway.frontends.workers_admin",
    "gateway.observability.logs",
    "gateway.observability.metrics",
    "gateway.policies.adaptive.aimd",
    "gateway.policies.adaptive.policy",
    "gateway.policies.cache.entry",
    "gateway.policies.cache.fields",
    "gateway.policies.cache.keys",
    "gateway.policies.cache.memory",
    "gateway.policies.cache.policy",
    "gateway.policies.cache.request",
    "gateway.policies.cache.rules",
    "gateway.policies.cache.status",
    "gateway.policies.cache.tiers",
    "gateway.policies.concurrency.policy",
    "gateway.policies.concurrency.slots",
    "gateway.policies.rate_limit.admit",
    "gateway.policies.rate_limit.algorithms",
    "gateway.policies.rate_limit.fields",
    "gateway.policies.rate_limit.give_back",
    "gateway.policies.rate_limit.keys",
    "gateway.policies.rate_limit.policy",
    "gateway.stores.redis",
    "gateway.stores.resp",
    "gateway.stores.resp_codec",
    "gateway.transport.forward",
    "gateway.transport.headers",
    "gateway.transport.native",
    "gateway.transport.native_conn",
    "gateway.transport.native_pool",
    "gateway.transport.native_streams",
]

#: The shared library holding the compiled code (``gateway/_compiled__mypyc.*.so``).
LIBRARY = "gateway._compiled"
LIBRARY_STEM = LIBRARY.rpartition(".")[2] + "__mypyc"


def _compiled_files() -> dict[str, Path]:
    """``{module name: extension file}`` for every compiled gateway module."""
    found: dict[str, Path] = {}
    for suffix in EXTENSION_SUFFIXES:
        for path in PACKAGE.rglob("*" + suffix):
            stem = path.name[: -len(suffix)]
            if stem == LIBRARY_STEM or "." in stem:
                continue
            parts = path.relative_to(PACKAGE.parent).with_name(stem).parts
            found[".".join(parts)] = path
    return found


def compiled_modules() -> list[str]:
    """The gateway's modules that run compiled, sorted; empty for a pure Python build."""
    return sorted(_compiled_files())


def stale_modules() -> list[str]:
    """Compiled modules whose ``.py`` changed after they were built.

    Only a source checkout can have them: an installed package's files all come from
    one wheel (and unpack in no particular order, so their times say nothing).
    """
    if "site-packages" in PACKAGE.parts or "dist-packages" in PACKAGE.parts:
        return []
    # The code is in the shared library; a module's own file is a small stub that an
    # incremental build (``setup.py build_ext --inplace``) leaves as it was.
    library = max(
        (p.stat().st_mtime for s in EXTENSION_SUFFIXES for p in PACKAGE.glob(LIBRARY_STEM + s)),
        default=0.0,
    )
    stale = []
    for name, path in _compiled_files().items():
        source = path.with_name(name.rpartition(".")[2] + ".py")
        built = max(path.stat().st_mtime, library)
        if source.exists() and source.stat().st_mtime > built:
            stale.append(name)
    return sorted(stale)


def describe() -> str:
    """One line for the start-up log and the benchmark's header."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    count = len(compiled)
    text = f"compiled with mypyc ({count} module{'' if count == 1 else 's'})"
    stale = stale_modules()
    if stale:
        text += f"; OLDER THAN THEIR SOURCE, rebuild with scripts/setup: {', '.join(stale)}"
    return text
