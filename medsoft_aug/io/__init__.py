"""Readers for DICOM, NIfTI and raster images. All return :class:`medsoft_aug.io.types.ImageData`."""
