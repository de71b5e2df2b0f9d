"""Floor 1 — what every other package uses: errors, atomic files, file names, fingerprints, JSON records, figures,
the Resources folder and its templates.

Imports nothing from the rest of TACEResponseLib.
"""
