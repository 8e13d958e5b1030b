// The browser client is not built into this binary yet.
