"""``python -m agentcast``: the same command line as the ``agentcast`` script."""

from __future__ import annotations

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
