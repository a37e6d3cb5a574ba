"""``python -m fusebench ...``: the same command line as the ``fusebench`` script."""

from fusebench.cli import main

if __name__ == "__main__":
    main()
