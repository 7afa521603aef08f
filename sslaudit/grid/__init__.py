"""Audit grids: a TOML config of victims × defences × attacks × budgets × seeds, run cell by cell into a
resumable results store (:mod:`.config`, :mod:`.store`, :mod:`.run`)."""
