"""Floor 1 — what every other package uses: errors, atomic files, file names, fingerprints, JSON records, figures,
the Resources folder and its templates, the TRIPOD+AI-style report layout (:mod:`.tripod`).

Imports nothing from the rest of TACEResponseLib.
"""
