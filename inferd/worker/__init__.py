"""The worker side (child processes) and the daemon side that manages them."""
