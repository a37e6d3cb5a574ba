"""``python -m fusebench ...`` (the same as ``python -m fusebench ...``)."""

from fusebench.cli import main

if __name__ == "__main__":
    main()
