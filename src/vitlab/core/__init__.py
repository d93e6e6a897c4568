"""Floor 0, the core: strict configs, the device and seed, the float precision, the memory layout, and safe
files. Imports nothing of vitlab."""
