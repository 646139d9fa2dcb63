"""Soft masks (``masks build``): hard masks from label maps or coordinates, softened by Eq. 1 of the paper.

levels.py (level names <-> labels), from_seg.py, from_coords.py, soften.py (pure array functions),
preview.py (contact sheet), stage.py (``build_masks``, the stage the CLI and ``medsoft_aug.api`` call).
"""
