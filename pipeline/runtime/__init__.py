"""Process and command-line plumbing: a command's logging, signals and exit; other processes."""
