"""`python -m fedsim.deploy.health URL [--ca FILE]`: the containers' health check.

Exits 0 when the URL answers HTTP 200 within the timeout (Flower's `/health`
endpoint), else 1 with one line on stderr. HTTPS is verified against `--ca`.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.error
import urllib.request


def probe(url: str, *, ca: str | None = None, timeout: float = 5.0) -> str | None:
    """None when `url` answers 200, else why not (one line)."""
    context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            return None if reply.status == 200 else f"{url} answered {reply.status}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"{url} is not healthy: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: exit status 0 (healthy) or 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--ca", default=None, help="CA certificate for HTTPS URLs")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    problem = probe(args.url, ca=args.ca, timeout=args.timeout)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
