"""Worker-side runners: one module per kind of call a worker serves, named by import string in
the ``Init`` frame (the daemon's kind registry chooses it)."""
