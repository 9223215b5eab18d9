"""``python -m precipdiff`` (and ``torchrun -m precipdiff train ...``)."""

from precipdiff.cli import main

if __name__ == "__main__":
    main()
