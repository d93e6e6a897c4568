"""Floor 1, the building blocks of lessons 01-04: patches, the class token, positional encodings, attention, the
encoder block. Imports only :mod:`vitlab.core`."""
