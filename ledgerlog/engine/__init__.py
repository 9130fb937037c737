"""ledgerlog engine: the log, the Avro codec, admission (the write side). Imports nothing above it."""
