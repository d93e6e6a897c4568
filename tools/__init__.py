"""Project tools: the site builder, the GPU check, the experiment drivers (run as scripts, imported by the tests)."""
