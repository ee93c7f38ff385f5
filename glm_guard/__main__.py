"""``python -m glm_guard``: the ``glm-guard`` command."""

from glm_guard.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
