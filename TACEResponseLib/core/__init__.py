"""Floor 1 — what every other package uses: errors, atomic files, file names, fingerprints, JSON records, figures.

Imports nothing from the rest of TACEResponseLib.
"""
