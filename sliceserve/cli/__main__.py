"""`python -m sliceserve.cli ...`: the `sliceserve` command without the installed script."""

from sliceserve.cli import main

if __name__ == "__main__":
    main()
