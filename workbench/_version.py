"""The workbench's version: one base-layer module, so that every module records it with an import
that points down (not from the package's face, `workbench/__init__.py`, which imports them)."""

__version__ = "0.1.0"
