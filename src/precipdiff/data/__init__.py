"""Data layer: transforms, satellite error emulator, synthetic rain, paired stores, patches.

Submodules are imported explicitly (``from precipdiff.data import transforms``); nothing is
imported here so that ``import precipdiff.data`` stays cheap.
"""
