"""``python -m captum_saco``: see :mod:`captum_saco.cli`."""

from captum_saco.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
