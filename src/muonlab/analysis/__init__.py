"""Analysis: read run folders, plot them and write reports. Reads only run folders, never training internals."""
